// End-to-end encryption with the SDK's Rust crypto: device keys and one-time keys, Olm-shared
// Megolm sessions over to-device messages, messages decrypted both ways, and a second device
// that appears later and decrypts what is sent after it logged in.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { DecryptionFailureCode } from "matrix-js-sdk/lib/crypto-api/index.js";

import {
    passwordLogin,
    register,
    startClient,
    stopAll,
    timeline,
    uniqueName,
    waitFor,
    waitForMembership,
} from "./support.js";

let alice;
let bob;
let bobSession;
let roomId;

before(async () => {
    alice = await startClient(await register(uniqueName("alice")), { crypto: true });
    bobSession = await register(uniqueName("bob"));
    bob = await startClient(bobSession, { crypto: true });
});
after(stopAll);

/** Waits until `client` has decrypted a message with this body and returns the event. */
function waitForDecrypted(client, room, body) {
    return waitFor(
        () =>
            timeline(client, room).find(
                (event) =>
                    event.isEncrypted() &&
                    !event.isDecryptionFailure() &&
                    event.getType() === "m.room.message" &&
                    event.getContent().body === body,
            ),
        `${client.getUserId()} (${client.getDeviceId()}) to decrypt "${body}"`,
    );
}

/** Waits until `client`'s crypto knows this device of this user. */
function waitForDevice(client, userId, deviceId) {
    return waitFor(async () => {
        const devices = await client.getCrypto().getUserDeviceInfo([userId], true);
        return devices.get(userId)?.has(deviceId);
    }, `${client.getUserId()} to know ${userId}'s device ${deviceId}`);
}

test("device keys are published and the other user's devices are found", async () => {
    const own = await alice.getCrypto().getOwnDeviceKeys();
    assert.ok(own.ed25519 && own.curve25519);
    // The server holds them, as /keys/query returns them to Bob's crypto.
    await waitForDevice(bob, alice.getUserId(), alice.getDeviceId());
    const devices = await bob.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
    const device = devices.get(alice.getUserId()).get(alice.getDeviceId());
    assert.equal(device.getIdentityKey(), own.curve25519);
    assert.equal(device.getFingerprint(), own.ed25519);
});

test("an encrypted room: messages both ways are encrypted on the wire and decrypted", async () => {
    const created = await alice.createRoom({
        preset: "private_chat",
        invite: [bob.getUserId()],
        initial_state: [
            {
                type: "m.room.encryption",
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            },
        ],
    });
    roomId = created.room_id;
    await waitForMembership(bob, roomId, "invite");
    await bob.joinRoom(roomId);
    await waitForMembership(bob, roomId, "join");
    await waitFor(
        () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join",
        "Alice to see Bob join",
    );
    assert.equal(await alice.getCrypto().isEncryptionEnabledInRoom(roomId), true);
    assert.equal(await bob.getCrypto().isEncryptionEnabledInRoom(roomId), true);

    const { event_id: fromAlice } = await alice.sendTextMessage(roomId, "Secret from Alice");
    const atBob = await waitForDecrypted(bob, roomId, "Secret from Alice");
    assert.equal(atBob.getId(), fromAlice);
    assert.equal(atBob.getWireType(), "m.room.encrypted");
    assert.equal(atBob.getSender(), alice.getUserId());

    // What the server stores is ciphertext only.
    const raw = await bob.fetchRoomEvent(roomId, fromAlice);
    assert.equal(raw.type, "m.room.encrypted");
    assert.equal(raw.content.algorithm, "m.megolm.v1.aes-sha2");
    assert.ok(!JSON.stringify(raw).includes("Secret from Alice"));

    const { event_id: fromBob } = await bob.sendTextMessage(roomId, "Secret from Bob");
    const atAlice = await waitForDecrypted(alice, roomId, "Secret from Bob");
    assert.equal(atAlice.getId(), fromBob);

    // The message is attributed to the device that sent it, by the keys the server published.
    const bobKeys = await bob.getCrypto().getOwnDeviceKeys();
    assert.equal(atAlice.getSenderKey(), bobKeys.curve25519);
    assert.equal(atAlice.getClaimedEd25519Key(), bobKeys.ed25519);
    assert.ok(await alice.getCrypto().getEncryptionInfoForEvent(atAlice), "encryption info for Bob's message");
});

test("a second device of Bob appears and decrypts messages sent after it logged in", async () => {
    const before = "Sent before Bob's second device";
    await alice.sendTextMessage(roomId, before);
    await waitForDecrypted(bob, roomId, before);

    const session = await passwordLogin(bobSession.user_id, undefined, "Bob's second device");
    assert.notEqual(session.device_id, bob.getDeviceId());
    const bob2 = await startClient(session, { crypto: true });
    await waitForMembership(bob2, roomId, "join");

    // The device-list change reaches Alice and Bob's first device through their syncs.
    await waitForDevice(alice, bob.getUserId(), bob2.getDeviceId());
    await waitForDevice(bob, bob.getUserId(), bob2.getDeviceId());

    const fromAlice = "For both of Bob's devices";
    await alice.sendTextMessage(roomId, fromAlice);
    await waitForDecrypted(bob2, roomId, fromAlice);
    await waitForDecrypted(bob, roomId, fromAlice);

    const fromBob = "From Bob's first device";
    await bob.sendTextMessage(roomId, fromBob);
    await waitForDecrypted(bob2, roomId, fromBob);
    await waitForDecrypted(alice, roomId, fromBob);

    const fromBob2 = "From Bob's second device";
    await bob2.sendTextMessage(roomId, fromBob2);
    await waitForDecrypted(alice, roomId, fromBob2);
    await waitForDecrypted(bob, roomId, fromBob2);

    // The key for what was sent before the device existed was never shared with it: the
    // history it fetched stays undecryptable (key backup, tested elsewhere, is the way to it).
    const old = await waitFor(
        () => timeline(bob2, roomId).find((event) => event.isEncrypted() && event.isDecryptionFailure()),
        "Bob's second device to hold the earlier message, undecryptable",
    );
    const noKey = [
        DecryptionFailureCode.MEGOLM_UNKNOWN_INBOUND_SESSION_ID,
        DecryptionFailureCode.HISTORICAL_MESSAGE_NO_KEY_BACKUP,
        DecryptionFailureCode.HISTORICAL_MESSAGE_BACKUP_UNCONFIGURED,
    ];
    assert.ok(noKey.includes(old.decryptionFailureReason), `failure: ${old.decryptionFailureReason}`);
});
