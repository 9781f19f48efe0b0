// Rooms and messages through the SDK's sync loop: create, invite, join, messages both ways,
// edits (m.replace), replies, reactions (m.annotation) and redactions.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
    newUser,
    sdk,
    stopAll,
    timeline,
    waitFor,
    waitForEvent,
    waitForMembership,
    waitForMessage,
} from "./support.js";

let alice;
let bob;
let roomId;

before(async () => {
    alice = await newUser("alice");
    bob = await newUser("bob");
});
after(stopAll);

test("create a room, invite, join", async () => {
    const { room_id } = await alice.createRoom({ name: "Interop", preset: "private_chat" });
    roomId = room_id;
    await waitFor(() => alice.getRoom(roomId)?.name === "Interop", "Alice to see the new room");
    assert.equal(alice.getRoom(roomId).getMyMembership(), "join");

    await alice.invite(roomId, bob.getUserId());
    await waitForMembership(bob, roomId, "invite");
    // The invite carries the stripped state Element shows on the invite screen.
    const invited = bob.getRoom(roomId);
    assert.equal(invited.name, "Interop");
    const inviteEvent = invited.currentState.getMember(bob.getUserId()).events.member;
    assert.equal(inviteEvent.getSender(), alice.getUserId());

    await bob.joinRoom(roomId);
    await waitForMembership(bob, roomId, "join");
    await waitFor(
        () => alice.getRoom(roomId).getMember(bob.getUserId())?.membership === "join",
        "Alice to see Bob join",
    );
    assert.equal(bob.getRoom(roomId).getJoinedMemberCount(), 2);
});

test("messages both ways through the sync loop", async () => {
    const { event_id: fromAlice } = await alice.sendTextMessage(roomId, "Hello Bob");
    const seen = await waitForEvent(bob, roomId, fromAlice);
    assert.equal(seen.getSender(), alice.getUserId());
    assert.deepEqual(seen.getContent(), { msgtype: "m.text", body: "Hello Bob" });

    const { event_id: fromBob } = await bob.sendMessage(roomId, {
        msgtype: "m.text",
        body: "Hi *Alice*",
        format: "org.matrix.custom.html",
        formatted_body: "Hi <em>Alice</em>",
    });
    const reply = await waitForEvent(alice, roomId, fromBob);
    assert.equal(reply.getContent().formatted_body, "Hi <em>Alice</em>");

    // Order is the same on both sides.
    const order = (client) =>
        timeline(client, roomId)
            .map((event) => event.getId())
            .filter((id) => id === fromAlice || id === fromBob);
    await waitFor(() => order(alice).length === 2, "both messages at Alice");
    assert.deepEqual(order(alice), [fromAlice, fromBob]);
    assert.deepEqual(order(bob), [fromAlice, fromBob]);

    // Back-pagination through /messages returns them too.
    const history = await bob.createMessagesRequest(roomId, null, 20, sdk.Direction.Backward);
    const ids = history.chunk.map((event) => event.event_id);
    assert.ok(ids.includes(fromAlice) && ids.includes(fromBob));
    assert.ok(ids.indexOf(fromBob) < ids.indexOf(fromAlice), "newest first going backwards");
});

test("an edit (m.replace) replaces the content on the other side and is bundled by the server", async () => {
    const { event_id: original } = await alice.sendTextMessage(roomId, "I cna spell");
    await waitForEvent(bob, roomId, original);
    const { event_id: edit } = await alice.sendMessage(roomId, {
        msgtype: "m.text",
        body: "* I can spell",
        "m.new_content": { msgtype: "m.text", body: "I can spell" },
        "m.relates_to": { rel_type: "m.replace", event_id: original },
    });

    const shown = await waitFor(() => {
        const event = bob.getRoom(roomId).findEventById(original);
        return event?.replacingEventId() === edit && event;
    }, "Bob to apply the edit");
    assert.equal(shown.getContent().body, "I can spell");

    // The server bundles the edit with the original (what a fresh client sees first).
    const raw = await bob.fetchRoomEvent(roomId, original);
    assert.equal(raw.unsigned?.["m.relations"]?.["m.replace"]?.event_id, edit);
    // And lists it as a relation.
    const relations = await bob.relations(roomId, original, "m.replace");
    assert.deepEqual(
        relations.events.map((event) => event.getId()),
        [edit],
    );
});

test("a reply points at the message it answers", async () => {
    const { event_id: question } = await alice.sendTextMessage(roomId, "Tea or coffee?");
    const seenQuestion = await waitForEvent(bob, roomId, question);
    const { event_id: answer } = await bob.sendMessage(roomId, {
        msgtype: "m.text",
        body: "Tea",
        "m.relates_to": { "m.in_reply_to": { event_id: seenQuestion.getId() } },
    });
    const seen = await waitForEvent(alice, roomId, answer);
    assert.equal(seen.replyEventId, question);
    assert.equal(seen.getContent().body, "Tea");
});

test("reactions (m.annotation) are counted, and a redacted reaction no longer counts", async () => {
    const { event_id: target } = await alice.sendTextMessage(roomId, "React to me");
    await waitForEvent(bob, roomId, target);
    const react = (client, key) =>
        client.sendEvent(roomId, sdk.EventType.Reaction, {
            "m.relates_to": { rel_type: sdk.RelationType.Annotation, event_id: target, key },
        });
    const { event_id: thumbs } = await react(bob, "👍");
    await react(alice, "👍");
    await react(bob, "🎉");

    const annotations = (client) => {
        const relations = client
            .getRoom(roomId)
            .relations.getChildEventsForEvent(target, sdk.RelationType.Annotation, sdk.EventType.Reaction);
        const counts = {};
        for (const [key, events] of relations?.getSortedAnnotationsByKey() ?? []) {
            counts[key] = events.size;
        }
        return counts;
    };
    await waitFor(
        () => JSON.stringify(annotations(alice)) === JSON.stringify({ "👍": 2, "🎉": 1 }),
        "Alice to count the reactions",
    );

    const listed = await alice.relations(roomId, target, sdk.RelationType.Annotation, sdk.EventType.Reaction);
    assert.equal(listed.events.length, 3);

    await bob.redactEvent(roomId, thumbs);
    await waitFor(
        () => JSON.stringify(annotations(alice)) === JSON.stringify({ "👍": 1, "🎉": 1 }),
        "Alice to stop counting the redacted reaction",
    );
});

test("a redacted message loses its content on both sides", async () => {
    const { event_id: secret } = await bob.sendTextMessage(roomId, "Oops, wrong room");
    await waitForEvent(alice, roomId, secret);
    const { event_id: redaction } = await bob.redactEvent(roomId, secret, undefined, { reason: "typo" });

    for (const client of [alice, bob]) {
        const event = await waitFor(() => {
            const found = client.getRoom(roomId).findEventById(secret);
            return found?.isRedacted() && found;
        }, `${client.getUserId()} to see the redaction`);
        assert.deepEqual(event.getContent(), {});
    }
    await waitForEvent(alice, roomId, redaction);

    // The server serves the redacted form from now on.
    const raw = await alice.fetchRoomEvent(roomId, secret);
    assert.deepEqual(raw.content, {});
    assert.equal(raw.unsigned?.redacted_because?.event_id, redaction);
    assert.equal(raw.unsigned?.redacted_because?.content?.reason, "typo");

    // Messages sent after the redaction still flow.
    await alice.sendTextMessage(roomId, "No worries");
    await waitForMessage(bob, roomId, "No worries");
});

test("an invite given in createRoom reaches the invitee, who joins", async () => {
    const carol = await newUser("carol");
    const { room_id: direct } = await alice.createRoom({
        preset: "trusted_private_chat",
        is_direct: true,
        invite: [carol.getUserId()],
    });
    await waitForMembership(carol, direct, "invite");
    const invite = carol.getRoom(direct).currentState.getMember(carol.getUserId()).events.member;
    assert.equal(invite.getContent().is_direct, true);
    await carol.joinRoom(direct);
    await waitForMembership(carol, direct, "join");
    await carol.sendTextMessage(direct, "Hello from Carol");
    await waitForMessage(alice, direct, "Hello from Carol");
});
