//! Push rules as the Matrix test suites check them: rule IDs Synapse accepts, every level of
//! the path (a kind's rules with a trailing slash), malformed paths and bodies refused with
//! 400, order and idempotency, and the poll rules of MSC3930.

use reqwest::Method;
use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

const RULES: &str = "/_matrix/client/v3/pushrules";

fn ids(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().filter_map(|rule| rule["rule_id"].as_str()).collect()
}

#[tokio::test]
async fn rules_of_every_kind_are_added_and_read_at_every_level() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let notice =
        json!([{ "kind": "event_match", "key": "content.msgtype", "pattern": "m.notice" }]);
    let cases = [
        ("room", "#spam:example.com", json!({})),
        ("sender", "@bob:example.com", json!({})),
        ("content", "my_content_rule", json!({ "pattern": "my_pattern" })),
        ("override", "my_override_rule", json!({ "conditions": notice })),
        ("underride", "my_underride_rule", json!({ "conditions": notice })),
        ("content", "тест", json!({ "pattern": "тест" })),
    ];
    for (kind, rule_id, mut body) in cases {
        body["actions"] = json!(["notify"]);
        let path = format!("{RULES}/global/{kind}/{}", encode(rule_id));
        alice.put(&path, body).await.ok();
        let rule = alice.get(&path).await.ok();
        assert_eq!(rule["rule_id"], rule_id);
        assert_eq!((rule["enabled"].clone(), rule["default"].clone()), (json!(true), json!(false)));
        let of_kind = alice.get(&format!("{RULES}/global/{kind}/")).await.ok();
        assert!(ids(&of_kind).contains(&rule_id), "{kind}: {of_kind}");
        let scope = alice.get(&format!("{RULES}/global/")).await.ok();
        assert!(ids(&scope[kind]).contains(&rule_id));
        let all = alice.get(&format!("{RULES}/")).await.ok();
        assert!(ids(&all["global"][kind]).contains(&rule_id));
        assert_eq!(alice.get(&format!("{path}/enabled")).await.ok(), json!({ "enabled": true }));
        assert_eq!(
            alice.get(&format!("{path}/actions")).await.ok(),
            json!({ "actions": ["notify"] })
        );
    }
}

#[tokio::test]
async fn rules_are_ordered_replaced_disabled_and_deleted() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = |id: &str| format!("{RULES}/global/room/{}", encode(id));
    let notify = json!({ "actions": ["notify"] });
    alice.put(&room("#a:example.com"), notify.clone()).await.ok();
    alice.put(&room("#b:example.com"), notify.clone()).await.ok();
    let order = |api: Api| async move { api.get(&format!("{RULES}/global/room/")).await.ok() };
    assert_eq!(ids(&order(alice.clone()).await), ["#b:example.com", "#a:example.com"]);
    let before = format!("{}?before={}", room("#c:example.com"), encode("#a:example.com"));
    alice.put(&before, notify.clone()).await.ok();
    assert_eq!(
        ids(&order(alice.clone()).await),
        ["#b:example.com", "#c:example.com", "#a:example.com"]
    );
    let after = format!("{}?after={}", room("#d:example.com"), encode("#a:example.com"));
    alice.put(&after, notify.clone()).await.ok();
    assert_eq!(ids(&order(alice.clone()).await).last(), Some(&"#d:example.com"));
    let nowhere = format!("{}?before=nothing", room("#e:example.com"));
    alice.put(&nowhere, notify.clone()).await.expect_error(404, "M_NOT_FOUND");

    // The same rule twice is one rule.
    let sender = format!("{RULES}/global/sender/{}", encode("@bob:example.com"));
    alice.put(&sender, notify.clone()).await.ok();
    alice.put(&sender, json!({ "actions": ["dont_notify"] })).await.ok();
    let senders = alice.get(&format!("{RULES}/global/sender/")).await.ok();
    assert_eq!(senders.as_array().unwrap().len(), 1);
    assert_eq!(senders[0]["actions"], json!(["dont_notify"]));

    alice
        .put(&format!("{}/enabled", room("#b:example.com")), json!({ "enabled": false }))
        .await
        .ok();
    assert_eq!(alice.get(&room("#b:example.com")).await.ok()["enabled"], false);
    alice.delete(&room("#b:example.com")).await.ok();
    alice.get(&room("#b:example.com")).await.expect_error(404, "M_NOT_FOUND");
    alice.delete(&room("#b:example.com")).await.expect_error(404, "M_NOT_FOUND");

    // The server's rules: their actions and state change, they are never deleted.
    let master = format!("{RULES}/global/override/.m.rule.master");
    alice.put(&format!("{master}/enabled"), json!({ "enabled": true })).await.ok();
    assert_eq!(alice.get(&master).await.ok()["enabled"], true);
    let message = format!("{RULES}/global/underride/.m.rule.message");
    alice.put(&format!("{message}/actions"), json!({ "actions": ["dont_notify"] })).await.ok();
    assert_eq!(alice.get(&message).await.ok()["actions"], json!(["dont_notify"]));
    alice.delete(&master).await.expect_error(400, "M_INVALID_PARAM");
    let unknown = format!("{RULES}/global/override/.m.rule.nothing/actions");
    alice.put(&unknown, json!({ "actions": ["notify"] })).await.expect_error(404, "M_NOT_FOUND");
    // The master rule stays first.
    let cond = json!({ "actions": ["notify"], "conditions": [] });
    alice.put(&format!("{RULES}/global/override/mine"), cond).await.ok();
    let overrides = alice.get(&format!("{RULES}/global/override/")).await.ok();
    assert_eq!(&ids(&overrides)[..2], [".m.rule.master", "mine"]);
}

#[tokio::test]
async fn malformed_paths_and_rules_are_refused() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let put_cases = [
        ("/", json!({})),
        ("/not_a_scope/room/%23spam%3Aexample.com", json!({ "actions": ["notify"] })),
        ("/global", json!({})),
        ("/global/room", json!({})),
        ("/global/room/", json!({})),
        ("/global/not_a_template/foo", json!({ "actions": ["notify"] })),
        ("/global/room/%23fo%5Co%3Aexample.com", json!({ "actions": ["notify"] })),
        ("/global/override/my_id", json!({ "actions": ["notify"] })),
        ("/global/underride/my_id", json!({ "actions": ["notify"] })),
        ("/global/underride/my_id", json!({ "actions": ["notify"], "conditions": [{}] })),
        ("/global/content/my_id", json!({ "actions": ["notify"] })),
        ("/global/room/%23my_room%3Aexample.com", json!({})),
        ("/global/room/%23my_room%3Aexample.com", json!({ "actions": ["not_an_action"] })),
        ("/global/override/.m.rule.master/not_an_attr", json!({ "enabled": true })),
        ("/global/override/.m.rule.master/enabled", json!({ "enabled": "not a boolean" })),
        ("/global/room/.dotted", json!({ "actions": ["notify"] })),
    ];
    for (path, body) in put_cases {
        let response = alice.put(&format!("{RULES}{path}"), body).await;
        assert_eq!(response.status, 400, "PUT {path}: {}", response.body);
    }
    for path in [
        "/global",
        "/global/room",
        "/not_a_scope/",
        "/global/not_a_template/",
        "/global/override/.m.rule.master/not_an_attr",
    ] {
        let response = alice.get(&format!("{RULES}{path}")).await;
        assert_eq!(response.status, 400, "GET {path}: {}", response.body);
    }
    let response = alice.call(Method::GET, RULES, None).await;
    assert_eq!(response.status, 404, "{}", response.body);
}

#[tokio::test]
async fn poll_rules_are_among_the_defaults() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let rule = |kind: &str, id: &str| {
        let alice = alice.clone();
        let path = format!("{RULES}/global/{kind}/{id}");
        async move { alice.get(&path).await.ok() }
    };
    let response = rule("override", ".org.matrix.msc3930.rule.poll_response").await;
    assert_eq!(response["actions"], json!([]));
    assert_eq!(response["default"], true);
    assert_eq!(
        response["conditions"],
        json!([{ "kind": "event_match", "key": "type", "pattern": "org.matrix.msc3381.poll.response" }])
    );
    let start = rule("underride", ".org.matrix.msc3930.rule.poll_start_one_to_one").await;
    assert_eq!(start["actions"], json!(["notify", { "set_tweak": "sound", "value": "default" }]));
    assert!(
        start["conditions"]
            .as_array()
            .unwrap()
            .contains(&json!({ "kind": "room_member_count", "is": "2" }))
    );
    let end = rule("underride", ".org.matrix.msc3930.rule.poll_end").await;
    assert_eq!(end["actions"], json!(["notify"]));
    let underride = alice.get(&format!("{RULES}/global/underride/")).await.ok();
    let order = ids(&underride);
    let position = |id: &str| order.iter().position(|rule| *rule == id).unwrap();
    assert!(
        position(".org.matrix.msc3930.rule.poll_start_one_to_one")
            < position(".org.matrix.msc3930.rule.poll_start")
    );
    assert!(
        position(".org.matrix.msc3930.rule.poll_end_one_to_one")
            < position(".org.matrix.msc3930.rule.poll_end")
    );
    // Every kind is listed, empty or not; /sync carries the same.
    let all = alice.get(&format!("{RULES}/")).await.ok();
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(all["global"][kind].is_array(), "{kind}: {all}");
    }
}
