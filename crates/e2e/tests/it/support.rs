//! Shared helpers: clients that register, log in and sync against a test server.

use std::time::Duration;

use matrix_sdk::{
    Client,
    config::SyncSettings,
    ruma::api::client::{
        account::register,
        uiaa::{AuthData, Dummy, RegistrationToken},
    },
};

/// A password every test user shares.
pub const PASSWORD: &str = "correct-horse-battery";

/// A client for the server at `base_url` (not logged in).
pub async fn client(base_url: &str) -> Client {
    Client::builder().homeserver_url(base_url).build().await.expect("the client builds")
}

/// Registers `name` through open registration (`m.login.dummy`) and returns the logged-in client.
pub async fn register(base_url: &str, name: &str) -> Client {
    register_client(client(base_url).await, name).await
}

/// Registers `name` through open registration with `client` (one built with stores of its own).
pub async fn register_client(client: Client, name: &str) -> Client {
    let mut request = register::v3::Request::new();
    request.username = Some(name.to_owned());
    request.password = Some(PASSWORD.to_owned());
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    client.matrix_auth().register(request).await.expect("registration succeeds");
    client
}

/// Registers `name` with an invite token; returns the error when registration fails.
pub async fn register_with_token(
    base_url: &str,
    name: &str,
    token: &str,
) -> Result<Client, matrix_sdk::Error> {
    let client = client(base_url).await;
    let mut request = register::v3::Request::new();
    request.username = Some(name.to_owned());
    request.password = Some(PASSWORD.to_owned());
    request.auth = Some(AuthData::RegistrationToken(RegistrationToken::new(token.to_owned())));
    client.matrix_auth().register(request).await?;
    Ok(client)
}

/// One short sync.
pub async fn sync(client: &Client) {
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(100)))
        .await
        .expect("sync succeeds");
}
