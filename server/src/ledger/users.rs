//! Creating and reading users. A user and its `user_balance` row are created
//! in one transaction, so every existing user has a row to lock.

use sea_orm::{EntityTrait, IntoActiveModel, SqlErr};

use super::error::LedgerError;
use super::handle::Ledger;
use super::model::{NewUser, User};

use crate::entity::{user, user_balance};

impl Ledger {
    /// Creates `new`, or returns the existing user when the same id was
    /// created with the same email before (a safe retry).
    pub async fn create_user(&self, new: NewUser) -> Result<User, LedgerError> {
        // Creating users shares the connections set aside for reads that
        // are not balance reads, so a flood of them cannot starve writes.
        let _turn = self.store.direct_read().await?;
        self.insert_user(new)
            .await
            .map_err(|e| self.store.explain(e))
    }

    async fn insert_user(&self, new: NewUser) -> Result<User, LedgerError> {
        if let Some(existing) = self.query_user(&new.id).await? {
            return same_user(existing, &new);
        }
        let created_at = self.store.clock.now();
        let row = user::Model {
            id: new.id.clone(),
            email: new.email.clone(),
            name: new.name.clone(),
            created_at,
            updated_at: created_at,
        };
        let balance = user_balance::Model {
            user_id: new.id.clone(),
            balance: 0,
            opening_balance: 0,
            last_sequence: 0,
            updated_at: created_at,
            held: 0,
            holds_expire_at: None,
            hold_count: 0,
            promotional: 0,
            deficit: 0,
            lots_expire_at: None,
            lots_since_sequence: 0,
            alert_count: 0,
        };
        let txn = self.store.begin_write().await?;
        let inserted = async {
            user::Entity::insert(row.clone().into_active_model())
                .exec_without_returning(&txn.txn)
                .await?;
            user_balance::Entity::insert(balance.into_active_model())
                .exec_without_returning(&txn.txn)
                .await
        }
        .await;
        match inserted {
            Ok(_) => {
                txn.commit().await?;
                Ok(row.into())
            }
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                // Lost a race with a concurrent create of the same id, or the
                // email belongs to someone else.
                txn.rollback().await;
                match self.query_user(&new.id).await? {
                    Some(existing) => same_user(existing, &new),
                    None => Err(LedgerError::EmailAlreadyExists(new.email)),
                }
            }
            Err(err) => {
                txn.rollback().await;
                Err(err.into())
            }
        }
    }

    /// Returns one user.
    pub async fn user(&self, user_id: &str) -> Result<User, LedgerError> {
        self.find_user(user_id)
            .await?
            .ok_or_else(|| LedgerError::UserNotFound(user_id.to_owned()))
    }

    async fn find_user(&self, user_id: &str) -> Result<Option<User>, LedgerError> {
        let _turn = self.store.direct_read().await?;
        self.query_user(user_id)
            .await
            .map_err(|e| self.store.explain(e))
    }

    async fn query_user(&self, user_id: &str) -> Result<Option<User>, LedgerError> {
        Ok(user::Entity::find_by_id(user_id.to_owned())
            .one(self.db())
            .await?
            .map(User::from))
    }
}

/// An existing user answers a create of the same id only if the email
/// matches; otherwise the id is taken.
fn same_user(existing: User, new: &NewUser) -> Result<User, LedgerError> {
    if existing.email == new.email {
        Ok(existing)
    } else {
        Err(LedgerError::UserAlreadyExists(new.id.clone()))
    }
}
