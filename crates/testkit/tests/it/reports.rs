//! Reporting over HTTP: events (by members who can see them) and rooms, stored for the
//! administrator without the reported content.

use rhizome_testkit::{Api, TestServer};
use serde_json::json;

#[tokio::test]
async fn events_and_rooms_are_reported_for_the_administrator() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let event_id = alice.send_text(&room_id, "something nasty").await;
    let other_room = alice.create_room(json!({})).await;
    let elsewhere = alice.send_text(&other_room, "private").await;

    let report =
        |room: &str, event: &str| format!("/_matrix/client/v3/rooms/{room}/report/{event}");
    bob.post(&report(&room_id, &event_id), json!({ "reason": "  rude  ", "score": -100 }))
        .await
        .ok();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/report"),
        json!({ "reason": "spam room" }),
    )
    .await
    .ok();
    // The room report does not need membership; the body may leave the reason out.
    carol.post(&format!("/_matrix/client/v3/rooms/{room_id}/report"), json!({})).await.ok();

    // Not joined, wrong room, unknown event or room: all 404.
    carol.post(&report(&room_id, &event_id), json!({})).await.expect_error(404, "M_NOT_FOUND");
    bob.post(&report(&room_id, &elsewhere), json!({})).await.expect_error(404, "M_NOT_FOUND");
    bob.post(&report(&room_id, "$unknown"), json!({})).await.expect_error(404, "M_NOT_FOUND");
    bob.post("/_matrix/client/v3/rooms/!nowhere:localhost/report", json!({ "reason": "x" }))
        .await
        .expect_error(404, "M_NOT_FOUND");
    bob.post(&report(&room_id, &event_id), json!({ "score": "very bad" }))
        .await
        .expect_error(400, "M_BAD_JSON");
    Api::new(&server.base_url)
        .post(&report(&room_id, &event_id), json!({}))
        .await
        .expect_error(401, "M_MISSING_TOKEN");

    let reports = server.services().reports(false).await.unwrap();
    assert_eq!(reports.len(), 3);
    let first = &reports[0].report;
    assert_eq!(first.reporter.as_str(), "@bob:localhost");
    assert_eq!(first.room_id.as_str(), room_id);
    assert_eq!(first.event_id.as_ref().map(|id| id.as_str()), Some(event_id.as_str()));
    assert_eq!((first.reason.as_deref(), first.score), (Some("rude"), Some(-100)));
    let second = &reports[1].report;
    assert_eq!((second.event_id.as_ref(), second.reason.as_deref()), (None, Some("spam room")));
    assert_eq!(reports[2].report.reporter.as_str(), "@carol:localhost");
    assert_eq!(reports[2].report.reason, None);

    // The unstable room-report path of MSC4151 and the r0 event path are served too.
    bob.post(
        &format!("/_matrix/client/unstable/org.matrix.msc4151/rooms/{room_id}/report"),
        json!({ "reason": "again" }),
    )
    .await
    .ok();
    bob.post(&format!("/_matrix/client/r0/rooms/{room_id}/report/{event_id}"), json!({}))
        .await
        .ok();
    assert_eq!(server.services().reports(false).await.unwrap().len(), 5);
}
