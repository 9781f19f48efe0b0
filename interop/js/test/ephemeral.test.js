// Typing notifications and read receipts (public, private, and the read markers Element sets)
// as the other client sees them.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { newUser, sdk, sharedRoom, stopAll, waitFor, waitForEvent } from "./support.js";

let alice;
let bob;
let roomId;

before(async () => {
    alice = await newUser("alice");
    bob = await newUser("bob");
    roomId = await sharedRoom(alice, bob);
});
after(stopAll);

test("typing starts and stops at the other client", async () => {
    const typing = () => bob.getRoom(roomId).getMember(alice.getUserId())?.typing;
    assert.equal(typing(), false);

    await alice.sendTyping(roomId, true, 30_000);
    await waitFor(() => typing() === true, "Bob to see Alice typing");

    await alice.sendTyping(roomId, false);
    await waitFor(() => typing() === false, "Bob to see Alice stop typing");
});

test("typing expires after its timeout", async () => {
    const typing = () => alice.getRoom(roomId).getMember(bob.getUserId())?.typing;
    await bob.sendTyping(roomId, true, 1_000);
    await waitFor(() => typing() === true, "Alice to see Bob typing");
    await waitFor(() => typing() === false, "Bob's typing to time out", 10_000);
});

test("a public read receipt reaches the sender, a private one stays private", async () => {
    const { event_id: first } = await alice.sendTextMessage(roomId, "one");
    const { event_id: second } = await alice.sendTextMessage(roomId, "two");
    const { event_id: third } = await alice.sendTextMessage(roomId, "three");
    const seenFirst = await waitForEvent(bob, roomId, first);
    const seenSecond = await waitForEvent(bob, roomId, second);
    const seenThird = await waitForEvent(bob, roomId, third);

    // Every receipt Alice's client is told about, as it arrives.
    const receiptsAtAlice = [];
    alice.on(sdk.RoomEvent.Receipt, (event) => receiptsAtAlice.push(event.getContent()));

    await bob.sendReadReceipt(seenFirst, sdk.ReceiptType.Read);
    await waitFor(
        () => alice.getRoom(roomId).getEventReadUpTo(bob.getUserId()) === first,
        "Alice to see Bob's receipt on the first message",
    );
    const readers = alice
        .getRoom(roomId)
        .getReceiptsForEvent(alice.getRoom(roomId).findEventById(first))
        .map((receipt) => [receipt.userId, receipt.type]);
    assert.deepEqual(readers, [[bob.getUserId(), "m.read"]]);

    // Element with "send read receipts" off sends m.read.private: Bob's own client sees it.
    await bob.sendReadReceipt(seenSecond, sdk.ReceiptType.ReadPrivate);
    await waitFor(
        () =>
            bob.getRoom(roomId).getReadReceiptForUserId(bob.getUserId(), true, sdk.ReceiptType.ReadPrivate)
                ?.eventId === second,
        "Bob to see his own private receipt",
    );

    // Then the read markers Element sets as the user scrolls: m.fully_read and a public m.read.
    await bob.setRoomReadMarkers(roomId, third, seenThird);
    await waitFor(
        () => alice.getRoom(roomId).getEventReadUpTo(bob.getUserId()) === third,
        "Alice to see Bob's receipt on the third message",
    );
    await waitFor(
        () => bob.getRoom(roomId).getAccountData("m.fully_read")?.getContent().event_id === third,
        "Bob's fully-read marker",
    );

    // Everything after the private receipt reached Alice, and it never did.
    const leaked = receiptsAtAlice.some((content) =>
        Object.values(content).some((byType) => byType["m.read.private"]),
    );
    assert.equal(leaked, false, "a private receipt reached another user");
    assert.ok(receiptsAtAlice.length >= 2);
});

test("a receipt clears the notification count the server keeps", async () => {
    const { event_id: ping } = await alice.sendTextMessage(roomId, "ping");
    const seen = await waitForEvent(bob, roomId, ping);
    const unread = () => bob.getRoom(roomId).getUnreadNotificationCount(sdk.NotificationCountType.Total);
    await waitFor(() => unread() > 0, "Bob to have an unread notification");
    await bob.sendReadReceipt(seen, sdk.ReceiptType.Read);
    await waitFor(() => unread() === 0, "the count to clear after the receipt");
});
