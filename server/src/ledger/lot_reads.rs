//! ListLots: a user's lots in draw order, as of now (they never lock).
//!
//! The page order is the order spends draw in (`lots.rs::draw_order`):
//! priority, soonest expiry (never-expiring last), oldest, id. Every key of
//! it is fixed when the lot is made, so keyset paging is exact while writes
//! go on: a page token names the last lot listed, and the next page is
//! every lot after it in that order (read from the stored row, so the
//! comparison uses the stored values exactly).
//!
//! "As of now" is the reads' rule (`balance_reads.rs`): a lot past its
//! expire_time keeps only what active holds earmarked, and the earmarks of
//! holds that expired but were not yet written down are given back first.

use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect};

use super::balance_reads::holds_now;
use super::error::LedgerError;
use super::handle::Ledger;
use super::lots::to_lot;
use super::model::{LotPage, LotQuery};
use super::store::time_value;
use crate::entity::credit_lot as lots;

impl Ledger {
    /// One page of a user's lots, in draw order.
    pub async fn lots(&self, query: LotQuery) -> Result<LotPage, LedgerError> {
        let after = query
            .page_token
            .as_deref()
            .map(|t| token::decode(t, &query.user_id, query.include_empty))
            .transpose()?;
        self.balance(&query.user_id).await?;
        let now = self.store.clock.now();
        let backend = self.store.backend();
        let _turn = self.store.direct_read().await?;
        let explain = |e: sea_orm::DbErr| self.store.explain(e.into());
        let mut select = lots::Entity::find().filter(lots::Column::UserId.eq(&query.user_id));
        if let Some(after) = after {
            let last = lots::Entity::find_by_id(after)
                .filter(lots::Column::UserId.eq(&query.user_id))
                .one(self.db())
                .await
                .map_err(explain)?
                .ok_or_else(|| {
                    LedgerError::invalid("page_token", "not a page token issued by this service")
                })?;
            select = select.filter(after_in_draw_order(&last, backend));
        }
        if !query.include_empty {
            // Empty as of now is decided below; this only skips the rows
            // that are empty for good.
            select = select.filter(lots::Column::Remaining.gt(0));
        }
        let rows = select
            .order_by(lots::Column::Priority, Order::Asc)
            .order_by(Expr::col(lots::Column::ExpireTime).is_null(), Order::Asc)
            .order_by(lots::Column::ExpireTime, Order::Asc)
            .order_by(lots::Column::CreatedAt, Order::Asc)
            .order_by(lots::Column::Id, Order::Asc)
            .limit(query.page_size + 1)
            .all(self.db())
            .await
            .map_err(explain)?;
        let more = rows.len() as u64 > query.page_size;
        let rows = &rows[..rows.len().min(query.page_size as usize)];
        let next_page_token = match rows.last() {
            Some(last) if more => {
                Some(token::encode(&query.user_id, query.include_empty, &last.id))
            }
            _ => None,
        };
        // Earmarks may belong to holds that expired unwritten: read the
        // user's active holds only when a listed lot has any.
        let freed = match rows.iter().any(|r| r.held > 0) {
            true => {
                holds_now(self.db(), &[query.user_id.as_str()], now)
                    .await
                    .map_err(|e| self.store.explain(e))?
                    .freed
            }
            false => Default::default(),
        };
        let mut listed = Vec::with_capacity(rows.len());
        for row in rows {
            let mut row = row.clone();
            row.held -= freed.get(&row.id).copied().unwrap_or(0);
            let lot = to_lot(&row, now)?;
            // A page may hold fewer lots than asked for (AIP-158): lots that
            // are empty only as of now are left out here.
            if query.include_empty || lot.remaining > 0 {
                listed.push(lot);
            }
        }
        Ok(LotPage {
            lots: listed,
            next_page_token,
        })
    }
}

/// The lots after `last` in draw order.
fn after_in_draw_order(last: &lots::Model, backend: sea_orm::DbBackend) -> Condition {
    use lots::Column as C;
    let created = time_value(backend, last.created_at);
    // Same priority and expiry: later by (created_at, id).
    let tail = Condition::any().add(C::CreatedAt.gt(created.clone())).add(
        Condition::all()
            .add(C::CreatedAt.eq(created))
            .add(C::Id.gt(last.id.as_str())),
    );
    let same_priority: SimpleExpr = match last.expire_time {
        Some(at) => {
            let at = time_value(backend, at);
            Condition::any()
                .add(C::ExpireTime.is_null())
                .add(C::ExpireTime.gt(at.clone()))
                .add(Condition::all().add(C::ExpireTime.eq(at)).add(tail))
                .into()
        }
        None => Condition::all()
            .add(C::ExpireTime.is_null())
            .add(tail)
            .into(),
    };
    Condition::any().add(C::Priority.gt(last.priority)).add(
        Condition::all()
            .add(C::Priority.eq(last.priority))
            .add(same_priority),
    )
}

/// Page tokens of ListLots: the last lot listed, bound to the user and the
/// filter.
mod token {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::{Digest, Sha256};

    use crate::ledger::error::LedgerError;

    fn binding(user_id: &str, include_empty: bool) -> String {
        let text = format!("{user_id}\u{0}{include_empty}");
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }

    pub fn encode(user_id: &str, include_empty: bool, last_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("l1.{}.{last_id}", binding(user_id, include_empty)))
    }

    pub fn decode(token: &str, user_id: &str, include_empty: bool) -> Result<String, LedgerError> {
        let invalid = |why: &str| LedgerError::invalid("page_token", why);
        let text = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid("not a page token issued by this service"))?;
        let mut parts = text.splitn(3, '.');
        let (Some("l1"), Some(bound), Some(last)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a page token issued by this service"));
        };
        if bound != binding(user_id, include_empty) {
            return Err(invalid(
                "the page token was issued for another user or other filters",
            ));
        }
        Ok(last.to_owned())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_token_is_bound_to_its_user_and_filter() {
            let t = encode("u1", false, "lot-9");
            assert_eq!(decode(&t, "u1", false).unwrap(), "lot-9");
            assert!(decode(&t, "u2", false).is_err());
            assert!(decode(&t, "u1", true).is_err());
            assert!(decode("not-a-token", "u1", false).is_err());
        }
    }
}
