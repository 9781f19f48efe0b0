//! The administrator's commands (`rhizome admin user|room|reports …`), through their library
//! functions against a running test server, checked over HTTP where clients see the effect.

use rhizome::{
    DataDirLock,
    admin::{reports, rooms, users},
};
use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

async fn login(server: &TestServer, user: &str, password: &str) -> rhizome_testkit::Response {
    Api::new(&server.base_url)
        .post(
            "/_matrix/client/v3/login",
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": password,
            }),
        )
        .await
}

fn membership(sync: &Value, section: &str, room_id: &str, user: &str) -> Option<Value> {
    let events = sync["rooms"][section][room_id]["timeline"]["events"].as_array()?;
    events
        .iter()
        .rev()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == user)
        .cloned()
}

#[tokio::test]
async fn accounts_are_created_listed_and_managed() {
    let server = TestServer::start().await;
    let services = server.services();

    let created = users::create(services, "dana", None, false).await.unwrap();
    assert_eq!(created.user_id, "@dana:localhost");
    let password = created.generated_password.clone().unwrap();
    assert_eq!(
        created.lines("created"),
        ["created @dana:localhost", &format!("password: {password}")]
    );
    let session = login(&server, "dana", &password).await.ok();
    let mut dana = Api::new(&server.base_url);
    dana.token = session["access_token"].as_str().map(str::to_owned);

    let erin = users::create(services, "@Erin:localhost", Some("a-long-password".into()), true)
        .await
        .unwrap();
    assert_eq!((erin.user_id.as_str(), erin.generated_password), ("@erin:localhost", None));
    login(&server, "erin", "a-long-password").await.ok();
    assert!(users::create(services, "dana", None, false).await.is_err(), "taken");
    assert!(users::create(services, "frank", Some("short".into()), false).await.is_err());
    assert!(users::create(services, "server-notices", None, false).await.is_err(), "reserved");
    assert!(users::create(services, "@gail:elsewhere.org", None, false).await.is_err());
    assert!(users::create(services, "Not Valid", None, false).await.is_err());

    let lines = users::list(services).await.unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("@dana:localhost\tdana\t-\tactive\tcreated 20"), "{lines:?}");
    assert!(lines[1].starts_with("@erin:localhost\terin\tadmin\tactive\t"), "{lines:?}");

    // Administration is granted and withdrawn.
    users::set_admin(services, "dana", true).await.unwrap();
    let dana_id = ruma::UserId::parse("@dana:localhost").unwrap();
    assert!(services.store.get_user(&dana_id).await.unwrap().unwrap().is_admin);
    assert_eq!(
        users::set_admin(services, "@dana:localhost", false).await.unwrap(),
        "@dana:localhost is no longer a server administrator"
    );
    assert!(users::list(services).await.unwrap()[0].contains("\t-\tactive"));
    assert!(users::set_admin(services, "nobody", true).await.is_err());

    // A new password ends the sessions.
    let room_id = Api::new_user(&server.base_url, "alice")
        .await
        .create_room(json!({ "preset": "public_chat" }))
        .await;
    dana.join(&room_id).await;
    let reset = users::reset_password(services, "dana", None).await.unwrap();
    let new_password = reset.generated_password.clone().unwrap();
    assert_ne!(new_password, password);
    dana.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    login(&server, "dana", &password).await.expect_error(403, "M_FORBIDDEN");
    let session = login(&server, "dana", &new_password).await.ok();
    dana.token = session["access_token"].as_str().map(str::to_owned);
    users::reset_password(services, "dana", Some("a-chosen-password".into())).await.unwrap();
    login(&server, "dana", "a-chosen-password").await.ok();
    assert!(users::reset_password(services, "dana", Some("short".into())).await.is_err());

    // Deactivation leaves rooms and ends sessions, for good.
    let session = login(&server, "dana", "a-chosen-password").await.ok();
    dana.token = session["access_token"].as_str().map(str::to_owned);
    assert_eq!(users::deactivate(services, "dana").await.unwrap(), "deactivated @dana:localhost");
    dana.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    login(&server, "dana", "a-chosen-password").await.expect_error(403, "M_USER_DEACTIVATED");
    let room = ruma::RoomId::parse(&room_id).unwrap();
    let members = services.store.members_of_room(&room, &["join"]).await.unwrap();
    assert!(members.iter().all(|member| member.user_id != "@dana:localhost"));
    assert!(
        users::list(services).await.unwrap()[1].contains("deactivated"),
        "sorted: alice, dana, erin"
    );
    assert!(users::deactivate(services, "dana").await.is_err(), "already deactivated");
    assert!(users::reset_password(services, "dana", None).await.is_err());
}

#[tokio::test]
async fn a_room_is_shut_down_through_the_event_path() {
    let server = TestServer::start().await;
    let services = server.services();
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let dave = Api::new_user(&server.base_url, "dave").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat", "name": "Town square", "room_alias_name": "town",
            "visibility": "public", "invite": ["@carol:localhost"],
        }))
        .await;
    bob.join(&room_id).await;
    dave.join(&room_id).await;
    let bob_since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let carol_since = carol.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    let listed = rooms::list(services).await.unwrap();
    let line = listed.iter().find(|line| line.starts_with(&room_id)).unwrap();
    assert_eq!(line, &format!("{room_id}\tTown square\t3 members\tv12\tpublished"));

    let report = rooms::shutdown(services, "#town:localhost", Some("This room broke our rules."))
        .await
        .unwrap();
    assert_eq!(
        report[0],
        format!("shut down {room_id}: nobody of this server can join it any more")
    );
    assert_eq!(report[1], "kicked: @bob:localhost, @carol:localhost, @dave:localhost");
    assert_eq!(report[2], "left: @alice:localhost");
    assert!(report.contains(&"removed from the room directory".to_owned()), "{report:?}");
    assert!(report.contains(&"aliases removed: #town:localhost".to_owned()), "{report:?}");
    let notice_line = report.iter().find(|line| line.starts_with("notice sent in ")).unwrap();
    let notice_room = notice_line.trim_start_matches("notice sent in ").to_owned();

    // Members see their kick, with the reason, in the room's timeline.
    let sync = bob.sync(&format!("timeout=0&since={bob_since}")).await;
    let kick = membership(&sync, "leave", &room_id, "@bob:localhost").expect("bob's kick");
    assert_eq!(kick["sender"], "@alice:localhost");
    assert_eq!(kick["content"]["membership"], "leave");
    assert_eq!(
        kick["content"]["reason"],
        "This room has been shut down by the server's administrator"
    );
    let sync = carol.sync(&format!("timeout=0&since={carol_since}")).await;
    let withdrawn = membership(&sync, "leave", &room_id, "@carol:localhost").expect("carol's");
    assert_eq!(withdrawn["sender"], "@alice:localhost");
    assert!(sync["rooms"]["invite"].get(&room_id).is_none());

    // The room is closed: no joins, no alias, not listed.
    bob.post(&format!("/_matrix/client/v3/join/{}", encode(&room_id)), json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({ "user_id": "@bob:localhost" }),
        )
        .await
        .expect_error(403, "M_FORBIDDEN");
    alice
        .get(&format!("/_matrix/client/v3/directory/room/{}", encode("#town:localhost")))
        .await
        .expect_error(404, "M_NOT_FOUND");
    let directory = alice.get("/_matrix/client/v3/publicRooms").await.ok();
    assert!(directory["chunk"].as_array().unwrap().is_empty(), "{directory}");
    let room = ruma::RoomId::parse(&room_id).unwrap();
    assert!(services.room_is_shut_down(&room).await.unwrap());
    let listed = rooms::list(services).await.unwrap();
    let line = listed.iter().find(|line| line.starts_with(&room_id)).unwrap();
    assert!(line.contains("\t0 members\tv12\tshut down 20"), "{line}");

    // The members who were joined get the notice; only the notices account speaks there.
    let invites = bob.sync("timeout=0").await;
    let invite = &invites["rooms"]["invite"][&notice_room];
    assert!(invite.is_object(), "bob is invited to the notice room: {invites}");
    assert!(
        carol.sync("timeout=0").await["rooms"]["invite"].get(&notice_room).is_none(),
        "carol was only invited"
    );
    bob.join(&notice_room).await;
    let messages = bob
        .get(&format!("/_matrix/client/v3/rooms/{notice_room}/messages?dir=b&limit=20"))
        .await
        .ok();
    let notice = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.message")
        .unwrap()
        .clone();
    assert_eq!(notice["sender"], "@server-notices:localhost");
    assert_eq!(notice["content"]["body"], "This room broke our rules.");
    let reply = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{notice_room}/send/m.room.message/r1"),
            json!({ "msgtype": "m.text", "body": "why?" }),
        )
        .await;
    reply.expect_error(403, "M_FORBIDDEN");
    // Nobody can be the notices account.
    login(&server, "server-notices", "").await.expect_error(403, "M_FORBIDDEN");
    Api::new(&server.base_url)
        .post(
            "/_matrix/client/v3/register",
            json!({ "username": "server-notices", "password": "a-long-password" }),
        )
        .await
        .expect_error(400, "M_USER_IN_USE");

    assert!(rooms::shutdown(services, "!unknown:localhost", None).await.is_err());
    assert!(rooms::shutdown(services, "#nothing:localhost", None).await.is_err());
    assert!(rooms::shutdown(services, "not a room", None).await.is_err());
}

#[tokio::test]
async fn members_nobody_can_kick_leave_by_themselves() {
    let server = TestServer::start().await;
    let services = server.services();
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    alice.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let since = carol.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // Bob and Carol have the same power: Bob (first by ID) cannot kick Carol, so both leave.
    let report = rooms::shutdown(services, &room_id, None).await.unwrap();
    assert_eq!(report[1], "kicked: none");
    assert_eq!(report[2], "left: @carol:localhost, @bob:localhost");
    assert!(!report.iter().any(|line| line.starts_with("notice sent")), "no message, no notice");
    let sync = carol.sync(&format!("timeout=0&since={since}")).await;
    let leave = membership(&sync, "leave", &room_id, "@carol:localhost").expect("carol left");
    assert_eq!(leave["sender"], "@carol:localhost");
    let room = ruma::RoomId::parse(&room_id).unwrap();
    assert!(services.store.members_of_room(&room, &["join"]).await.unwrap().is_empty());
}

#[tokio::test]
async fn reports_are_listed_and_resolved() {
    let server = TestServer::start().await;
    let services = server.services();
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let event_id = alice.send_text(&room_id, "nasty").await;
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/report/{event_id}"),
        json!({ "reason": "rude\nand mean", "score": -50 }),
    )
    .await
    .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/report"), json!({})).await.ok();

    let lines = reports::list(services, false).await.unwrap();
    assert_eq!(lines.len(), 2);
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(fields[0], "#1");
    assert_eq!(
        &fields[2..],
        ["@bob:localhost", room_id.as_str(), event_id.as_str(), "score -50", "rude and mean"]
    );
    assert!(lines[0].contains("\t20"), "with its time: {}", lines[0]);
    assert!(lines[1].ends_with(&format!("{room_id}\troom\tscore -\t(no reason)")), "{}", lines[1]);
    assert!(!lines.join("\n").contains("nasty"), "the reported message is not copied");

    assert_eq!(reports::resolve(services, "#1").await.unwrap(), "resolved report #1");
    assert_eq!(reports::list(services, false).await.unwrap().len(), 1);
    let all = reports::list(services, true).await.unwrap();
    assert!(all[0].contains("\tresolved 20"), "{}", all[0]);
    assert!(!all[1].contains("resolved"));
    assert!(reports::resolve(services, "1").await.is_err(), "resolved once");
    assert!(reports::resolve(services, "99").await.is_err());
    assert!(reports::resolve(services, "first").await.is_err());
    reports::resolve(services, "2").await.unwrap();
    assert!(reports::list(services, false).await.unwrap().is_empty());
}

#[tokio::test]
async fn commands_that_change_rooms_wait_for_the_server_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.data_dir = data_dir.clone();
    })
    .await;
    let error = DataDirLock::acquire(&data_dir, "cannot shut the room down").unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("cannot shut the room down") && text.contains("already running"),
        "{text}"
    );
    let mut second = server.config.clone();
    second.listen = "127.0.0.1:0".parse().unwrap();
    let refused = rhizome::start(second.clone()).await.err().expect("a second server is refused");
    assert!(refused.to_string().contains("cannot start"), "{refused}");
    server.stop().await;
    let lock = DataDirLock::acquire(&data_dir, "test").unwrap();
    assert!(DataDirLock::acquire(&data_dir, "again").is_err(), "one holder at a time");
    assert!(rhizome::start(second).await.is_err(), "nor while a command holds the lock");
    drop(lock);
    DataDirLock::acquire(&data_dir, "test").unwrap();
}
