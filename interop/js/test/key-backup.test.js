// Secret storage, cross-signing and server-side key backup, as Element's "set up recovery"
// does them: one device bootstraps everything and its room keys go to the backup; a new device,
// given the recovery key, verifies itself from secret storage, restores the backup and decrypts
// history it never received keys for.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
    PASSWORD,
    passwordLogin,
    register,
    sdk,
    startClient,
    stopAll,
    stopClient,
    timeline,
    uniqueName,
    waitFor,
    waitForMembership,
} from "./support.js";

/** The recovery key, known to the first device (which makes it) and typed into the second. */
let recoveryKey;
const cryptoCallbacks = {
    getSecretStorageKey: async ({ keys }) => {
        if (!recoveryKey) {
            return null;
        }
        const keyId = Object.keys(keys)[0];
        return [keyId, recoveryKey.privateKey];
    },
};

/** Answers user-interactive auth with the password, as Element's password dialog does. */
function passwordUia(client) {
    return (makeRequest) => {
        let fail;
        const failed = new Promise((_, reject) => {
            fail = reject;
        });
        const auth = new sdk.InteractiveAuth({
            matrixClient: client,
            doRequest: (authDict) => makeRequest(authDict),
            stateUpdated: (stage, status) => {
                if (stage !== "m.login.password" || status.errcode) {
                    fail(new Error(`UIA stage ${stage} failed: ${status.errcode ?? "not offered"}`));
                    return;
                }
                auth.submitAuthDict({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: client.getUserId() },
                    password: PASSWORD,
                });
            },
            requestEmailToken: () => Promise.reject(new Error("no e-mail")),
        });
        return Promise.race([auth.attemptAuth(), failed]);
    };
}

function backedUpSessions(client, version, roomId) {
    return client.http
        .authedRequest(sdk.Method.Get, "/room_keys/keys", { version })
        .then((body) => Object.keys(body.rooms?.[roomId]?.sessions ?? {}).length);
}

function encryptedMessages(client, roomId) {
    return timeline(client, roomId).filter((event) => event.isEncrypted());
}

let aliceSession;
let alice;
let bob;
let roomId;
let backupVersion;

before(async () => {
    aliceSession = await register(uniqueName("alice"));
    alice = await startClient(aliceSession, { crypto: true, clientOpts: { cryptoCallbacks } });
    bob = await startClient(await register(uniqueName("bob")), { crypto: true });
});
after(stopAll);

test("the first device sets up cross-signing, secret storage and a key backup", async () => {
    const crypto = alice.getCrypto();
    recoveryKey = await crypto.createRecoveryKeyFromPassphrase();
    assert.ok(recoveryKey.encodedPrivateKey, "a recovery key to show the user");

    await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordUia(alice) });
    await crypto.bootstrapSecretStorage({
        createSecretStorageKey: async () => recoveryKey,
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
    });

    assert.equal(await crypto.isCrossSigningReady(), true);
    assert.equal(await crypto.isSecretStorageReady(), true);
    const status = await crypto.getCrossSigningStatus();
    assert.equal(status.publicKeysOnDevice, true);
    assert.deepEqual(status.privateKeysCachedLocally, { masterKey: true, selfSigningKey: true, userSigningKey: true });

    // The backup version exists on the server and this device uses it.
    const info = await crypto.getKeyBackupInfo();
    assert.ok(info?.version);
    assert.equal(info.algorithm, "m.megolm_backup.v1.curve25519-aes-sha2");
    backupVersion = info.version;
    await waitFor(async () => (await crypto.getActiveSessionBackupVersion()) === backupVersion, "the backup to be active");
    assert.equal((await crypto.isKeyBackupTrusted(info)).trusted, true);

    // Another user sees Alice's cross-signing identity.
    await waitFor(
        () => bob.getCrypto().userHasCrossSigningKeys(alice.getUserId(), true),
        "Bob to see Alice's cross-signing keys",
    );
});

test("room keys of an encrypted conversation reach the backup", async () => {
    const created = await alice.createRoom({
        preset: "private_chat",
        invite: [bob.getUserId()],
        initial_state: [
            { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
        ],
    });
    roomId = created.room_id;
    await waitForMembership(bob, roomId, "invite");
    await bob.joinRoom(roomId);
    await waitFor(
        () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join",
        "Alice to see Bob join",
    );

    await alice.sendTextMessage(roomId, "History from Alice");
    await bob.sendTextMessage(roomId, "History from Bob");
    await waitFor(
        () =>
            encryptedMessages(alice, roomId).some(
                (event) => !event.isDecryptionFailure() && event.getContent().body === "History from Bob",
            ),
        "Alice to decrypt Bob's message",
    );

    // Alice's own outbound session and Bob's session she received: two sessions backed up.
    await waitFor(
        async () => (await backedUpSessions(alice, backupVersion, roomId)) === 2,
        "both Megolm sessions in the server's backup",
        30_000,
    );
    const counts = await alice.http.authedRequest(sdk.Method.Get, "/room_keys/version");
    assert.equal(counts.version, backupVersion);
    assert.equal(counts.count, 2);
});

test("a new device restores the backup with the recovery key and decrypts history", async () => {
    // The old device goes away, so nothing but the backup can give the new one the keys.
    stopClient(alice);
    stopClient(bob);

    const session = await passwordLogin(aliceSession.user_id, PASSWORD, "Alice's new device");
    const alice2 = await startClient(session, { crypto: true, clientOpts: { cryptoCallbacks } });
    await waitForMembership(alice2, roomId, "join");

    // Both messages arrive but cannot be decrypted yet.
    await waitFor(
        () => {
            const events = encryptedMessages(alice2, roomId);
            return events.length === 2 && events.every((event) => event.isDecryptionFailure());
        },
        "two undecryptable messages on the new device",
    );

    const crypto = alice2.getCrypto();
    // The new device learns its user's cross-signing identity from /keys/query (Element waits
    // for it too before offering "verify with recovery key").
    await waitFor(
        async () => (await crypto.getCrossSigningStatus()).publicKeysOnDevice,
        "the new device to download its user's cross-signing keys",
    );
    // "Verify with recovery key": cross-signing keys come out of secret storage and sign this device.
    await crypto.bootstrapCrossSigning({});
    const verification = await waitFor(async () => {
        const status = await crypto.getDeviceVerificationStatus(alice2.getUserId(), alice2.getDeviceId());
        return status?.crossSigningVerified && status;
    }, "the new device to be cross-signed");
    assert.equal(verification.signedByOwner, true);

    await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
    const check = await crypto.checkKeyBackupAndEnable();
    assert.equal(check?.backupInfo?.version, backupVersion);
    assert.equal(check.trustInfo.trusted, true);

    const restored = await crypto.restoreKeyBackup();
    assert.equal(restored.total, 2);
    assert.equal(restored.imported, 2);

    const bodies = await waitFor(
        () => {
            const events = encryptedMessages(alice2, roomId);
            if (events.some((event) => event.isDecryptionFailure())) {
                return false;
            }
            return events.map((event) => event.getContent().body);
        },
        "the history to decrypt on the new device",
    );
    assert.deepEqual(bodies, ["History from Alice", "History from Bob"]);
});
