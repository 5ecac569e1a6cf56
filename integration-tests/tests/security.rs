//! Who may call: API keys with roles, TLS and client certificates, through a
//! real server and real clients.

use anyhow::ensure;
use credit_proto::v1 as pb;
use credit_server::app::ServeOptions;
use credit_server::auth::{KeyRing, Role, key_line};
use integration_tests::api::with_key;
use integration_tests::{Client, TestDb, TestServer, api};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const READER: &str = "reader-key-0123456789";
const SERVICE: &str = "service-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

fn keys() -> KeyRing {
    let lines = [
        key_line("dashboard", Role::Reader, READER),
        key_line("billing", Role::Service, SERVICE),
        key_line("ops", Role::Admin, ADMIN),
    ];
    KeyRing::parse(&lines.join("\n")).expect("valid key lines")
}

fn balance_of(user: &str) -> pb::GetBalanceRequest {
    pb::GetBalanceRequest {
        user_id: user.into(),
    }
}

#[tokio::test]
async fn keys_and_roles_decide_who_may_call() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let server = TestServer::start_with(
        &db.url,
        ServeOptions {
            keys: Some(keys()),
            ..Default::default()
        },
    )
    .await?;
    let mut c: Client = server.client().await?;

    // No key, or an unknown one: UNAUTHENTICATED, the same for a user that
    // exists and one that does not.
    let admin_create = pb::CreateUserRequest {
        user_id: "u".into(),
        email: "u@x.com".into(),
        name: String::new(),
    };
    c.create_user(with_key(admin_create, ADMIN)).await?;
    for user in ["u", "nobody"] {
        let none = c.get_balance(balance_of(user)).await.expect_err("no key");
        ensure!(none.code() == Code::Unauthenticated, "{none:?}");
        let wrong = c
            .get_balance(with_key(balance_of(user), "guess"))
            .await
            .expect_err("bad key");
        ensure!(wrong.code() == Code::Unauthenticated && wrong.message() == "unknown API key");
        let reader_writes = c
            .top_up(with_key(
                pb::TopUpRequest {
                    user_id: user.into(),
                    amount: 1,
                    ..Default::default()
                },
                READER,
            ))
            .await
            .expect_err("reader cannot top up");
        ensure!(
            reader_writes.code() == Code::PermissionDenied,
            "{reader_writes:?}"
        );
    }

    // reader: reads only.
    let b = c
        .get_balance(with_key(balance_of("u"), READER))
        .await?
        .into_inner();
    ensure!(b.balance == 0);
    // service: top-up, spend, refund of usage; not grant, not create.
    let top_up = c
        .top_up(with_key(
            pb::TopUpRequest {
                user_id: "u".into(),
                amount: 100,
                ..Default::default()
            },
            SERVICE,
        ))
        .await?
        .into_inner();
    let spend = c
        .spend(with_key(
            pb::SpendRequest {
                user_id: "u".into(),
                amount: 30,
                ..Default::default()
            },
            SERVICE,
        ))
        .await?
        .into_inner();
    let refund = |tx: &Option<pb::Transaction>| pb::RefundRequest {
        user_id: "u".into(),
        transaction_id: tx.clone().unwrap_or_default().transaction_id,
        amount: Some(10),
        ..Default::default()
    };
    c.refund(with_key(refund(&spend.transaction), SERVICE))
        .await?;
    let not_usage = c
        .refund(with_key(refund(&top_up.transaction), SERVICE))
        .await
        .expect_err("service refunds usage only");
    ensure!(not_usage.code() == Code::PermissionDenied, "{not_usage:?}");
    for denied in [
        c.grant(with_key(
            pb::GrantRequest {
                user_id: "u".into(),
                amount: 1,
                ..Default::default()
            },
            SERVICE,
        ))
        .await
        .err(),
        c.create_user(with_key(
            pb::CreateUserRequest {
                user_id: "v".into(),
                email: "v@x.com".into(),
                name: String::new(),
            },
            SERVICE,
        ))
        .await
        .err(),
    ] {
        ensure!(denied.map(|s| s.code()) == Some(Code::PermissionDenied));
    }
    // admin: everything, including refunding a top-up.
    c.grant(with_key(
        pb::GrantRequest {
            user_id: "u".into(),
            amount: 5,
            ..Default::default()
        },
        ADMIN,
    ))
    .await?;
    c.refund(with_key(refund(&top_up.transaction), ADMIN))
        .await?;
    let b = c
        .get_balance(with_key(balance_of("u"), ADMIN))
        .await?
        .into_inner();
    ensure!(b.balance == 100 - 30 + 10 + 5 - 10, "balance {}", b.balance);

    // Health and reflection stay open.
    let channel = Endpoint::from_shared(server.endpoint())?.connect().await?;
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    ensure!(health.into_inner().status == 1, "SERVING without a key");

    server.stop().await;
    db.drop_database().await
}

/// A CA, a server certificate for localhost and a client certificate.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> anyhow::Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |name: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    Ok(Pki {
        ca: ca.pem(),
        server: leaf("localhost")?,
        client: leaf("billing-client")?,
    })
}

#[tokio::test]
async fn tls_and_client_certificates() -> anyhow::Result<()> {
    let pki = pki()?;
    let db = TestDb::sqlite().await?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server.0, &pki.server.1))
        .client_ca_root(Certificate::from_pem(&pki.ca));
    let server = TestServer::start_with(
        &db.url,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await?;
    let url = format!("https://localhost:{}", server.addr.port());
    let trust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    // With a client certificate from the CA: served.
    let channel = Endpoint::from_shared(url.clone())?
        .tls_config(
            trust
                .clone()
                .identity(Identity::from_pem(&pki.client.0, &pki.client.1)),
        )?
        .connect()
        .await?;
    let mut c = Client::new(channel);
    api::create_user(&mut c, "tls-user").await?;
    ensure!(api::balance(&mut c, "tls-user").await? == 0);

    // Without one, or in plaintext: refused.
    let no_cert = async {
        let channel = Endpoint::from_shared(url.clone())?
            .tls_config(trust.clone())?
            .connect()
            .await?;
        Ok::<_, anyhow::Error>(api::balance(&mut Client::new(channel), "tls-user").await?)
    };
    ensure!(
        no_cert.await.is_err(),
        "a client without a certificate was served"
    );
    let plain = async {
        let channel = Endpoint::from_shared(server.endpoint())?.connect().await?;
        Ok::<_, anyhow::Error>(api::balance(&mut Client::new(channel), "tls-user").await?)
    };
    ensure!(plain.await.is_err(), "a plaintext client was served");

    server.stop().await;
    db.drop_database().await
}
