//! Following `next_page_token` until the last page: what every list query
//! of the client (history, holds) shares.

use std::future::Future;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::Error;

/// Every item of every page, fetching pages as the stream is read, from
/// `first` on. `fetch` reads one page (its items and next token); `token`
/// reads a request's page token and `with_token` sets it. The stream ends
/// after the last page, or with the first error.
pub(crate) fn stream<M, T, F, Fut>(
    first: M,
    token: fn(&M) -> &str,
    with_token: fn(M, String) -> M,
    fetch: F,
) -> BoxStream<'static, Result<T, Error>>
where
    M: Clone + Send + 'static,
    T: Send + 'static,
    F: Fn(M) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), Error>> + Send,
{
    let pages = stream::try_unfold(Some(first), move |next| {
        let fetch = fetch.clone();
        async move {
            let Some(message) = next else {
                return Ok(None);
            };
            let (items, next_token) = fetch(message.clone()).await?;
            let following = match next_token {
                // A server that hands back the token it was given would
                // make this stream loop forever.
                Some(next) if next == token(&message) => {
                    return Err(Error::InvalidResponse(
                        "the server returned the page token it was given".to_owned(),
                    ));
                }
                Some(next) => Some(with_token(message, next)),
                None => None,
            };
            Ok(Some((items, following)))
        }
    });
    pages
        .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}
