//! Creating users.

use std::future::IntoFuture;

use credit_proto::v1 as pb;
use futures::future::BoxFuture;

use crate::model::required;
use crate::{CreditClient, Error, User};

/// A user to create: built by [`CreditClient::create_user`], sent by
/// [`CreateUser::send`] or by `.await`ing it.
#[must_use = "a request does nothing until it is sent or awaited"]
#[derive(Debug)]
pub struct CreateUser<'a> {
    client: &'a CreditClient,
    message: pb::CreateUserRequest,
}

impl CreateUser<'_> {
    /// The user's display name (at most 256 characters).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.message.name = name.into();
        self
    }

    /// Creates the user with a zero balance. Creating the same user again
    /// with the same email returns the existing user, which is what makes
    /// retrying this call safe.
    pub async fn send(self) -> Result<User, Error> {
        let response = self
            .client
            .call(self.message, |mut grpc, request| async move {
                grpc.create_user(request).await
            })
            .await?;
        required(response.user, "user")?.try_into()
    }
}

impl<'a> IntoFuture for CreateUser<'a> {
    type Output = Result<User, Error>;
    type IntoFuture = BoxFuture<'a, Result<User, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

impl CreditClient {
    /// Creates a user (id: 1 to 128 characters) with an email address.
    /// Fails with [`Error::AlreadyExists`] when the id exists with another
    /// email or the email belongs to another user.
    pub fn create_user(
        &self,
        user_id: impl Into<String>,
        email: impl Into<String>,
    ) -> CreateUser<'_> {
        CreateUser {
            client: self,
            message: pb::CreateUserRequest {
                user_id: user_id.into(),
                email: email.into(),
                name: String::new(),
            },
        }
    }
}
