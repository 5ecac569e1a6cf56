//! The audit trail: every write records who made it (the API key's name, or
//! `anonymous` without keys, and the TLS client-certificate subject), shown
//! by GetTransaction and ListTransactions and filterable in history.

use anyhow::ensure;
use credit_proto::v1 as pb;
use credit_server::app::ServeOptions;
use credit_server::auth::{KeyRing, Role, key_line};
use integration_tests::api::with_key;
use integration_tests::{TestDb, TestServer, api, database_tests};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

const SERVICE: &str = "audit-service-key-0123456789";
const ADMIN: &str = "audit-admin-key-0123456789";

database_tests!(
    writes_record_the_key_name_and_history_filters_by_it,
    writes_without_keys_are_anonymous
);

async fn writes_record_the_key_name_and_history_filters_by_it(db: &TestDb) -> anyhow::Result<()> {
    let lines = [
        key_line("billing", Role::Service, SERVICE),
        key_line("ops", Role::Admin, ADMIN),
    ];
    let options = ServeOptions {
        keys: Some(KeyRing::parse(&lines.join("\n")).map_err(anyhow::Error::msg)?),
        ..Default::default()
    };
    let server = TestServer::start_with(&db.url, options).await?;
    let mut c = server.client().await?;
    let user = pb::CreateUserRequest {
        user_id: "u".into(),
        email: "u@example.com".into(),
        name: String::new(),
    };
    c.create_user(with_key(user, ADMIN)).await?;
    let top_up = |key: &str| pb::TopUpRequest {
        user_id: "u".into(),
        amount: 10,
        idempotency_key: key.into(),
        ..Default::default()
    };
    let by_billing = c
        .top_up(with_key(top_up("t1"), SERVICE))
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    ensure!(by_billing.created_by == "billing", "{by_billing:?}");
    ensure!(by_billing.created_by_certificate_subject.is_empty());
    c.top_up(with_key(top_up("t2"), SERVICE)).await?;
    let grant = pb::GrantRequest {
        user_id: "u".into(),
        amount: 5,
        ..Default::default()
    };
    c.grant(with_key(grant, ADMIN)).await?;
    // A retry by another key is the same write: it keeps its first author.
    let replayed = c
        .top_up(with_key(top_up("t1"), ADMIN))
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    ensure!(replayed.transaction_id == by_billing.transaction_id);
    ensure!(replayed.created_by == "billing", "{replayed:?}");

    let shown = c
        .get_transaction(with_key(
            pb::GetTransactionRequest {
                user_id: "u".into(),
                transaction_id: by_billing.transaction_id.clone(),
            },
            ADMIN,
        ))
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    ensure!(shown.created_by == "billing");

    let authors = async |c: &mut integration_tests::Client, created_by: &str| {
        let page = c
            .list_transactions(with_key(
                pb::ListTransactionsRequest {
                    user_id: "u".into(),
                    created_by: created_by.into(),
                    ..Default::default()
                },
                ADMIN,
            ))
            .await?
            .into_inner();
        Ok::<_, anyhow::Error>(
            page.transactions
                .into_iter()
                .map(|t| (t.sequence, t.created_by))
                .collect::<Vec<_>>(),
        )
    };
    let billing = authors(&mut c, "billing").await?;
    ensure!(
        billing == [(2, "billing".to_owned()), (1, "billing".to_owned())],
        "{billing:?}"
    );
    let ops = authors(&mut c, "ops").await?;
    ensure!(ops == [(3, "ops".to_owned())], "{ops:?}");
    ensure!(authors(&mut c, "nobody").await?.is_empty());
    ensure!(authors(&mut c, "").await?.len() == 3);
    server.stop().await;
    Ok(())
}

async fn writes_without_keys_are_anonymous(db: &TestDb) -> anyhow::Result<()> {
    let server = TestServer::start(&db.url).await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let tx = api::top_up(&mut c, "u", 7)
        .await?
        .transaction
        .unwrap_or_default();
    ensure!(tx.created_by == "anonymous", "{tx:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn client_certificate_subjects_are_recorded() -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |name: &str, org: Option<&str>| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        if let Some(org) = org {
            dn.push(DnType::OrganizationName, org);
        }
        params.distinguished_name = dn;
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf("localhost", None)?;
    let (client_cert, client_key) = leaf("billing-worker", Some("Example Billing"))?;

    let db = TestDb::sqlite().await?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server_cert, &server_key))
        .client_ca_root(Certificate::from_pem(ca.pem()));
    let options = ServeOptions {
        tls: Some(tls),
        ..Default::default()
    };
    let server = TestServer::start_with(&db.url, options).await?;
    let channel = Endpoint::from_shared(format!("https://localhost:{}", server.addr.port()))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .domain_name("localhost")
                .identity(Identity::from_pem(&client_cert, &client_key)),
        )?
        .connect()
        .await?;
    let mut c = integration_tests::Client::new(channel);
    api::create_user(&mut c, "u").await?;
    let tx = api::top_up(&mut c, "u", 3)
        .await?
        .transaction
        .unwrap_or_default();
    ensure!(tx.created_by == "anonymous", "{tx:?}");
    let subject = &tx.created_by_certificate_subject;
    ensure!(
        subject.contains("CN=billing-worker") && subject.contains("O=Example Billing"),
        "subject {subject:?}"
    );
    server.stop().await;
    db.drop_database().await
}
