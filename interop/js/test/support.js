// Shared helpers for the matrix-js-sdk interoperability tests: accounts, clients that sync like
// Element's, and polling waits. The server is started by scripts/interop-js.sh, which passes its
// address and two registration tokens in the environment.

import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import * as sdk from "matrix-js-sdk";
import { logger as sdkLogger } from "matrix-js-sdk/lib/logger.js";

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"];
const logLevel = Math.max(0, LOG_LEVELS.indexOf(process.env.INTEROP_LOG_LEVEL ?? "error"));

// Parts of the SDK log through its global logger, whose named children are all set to "debug"
// and look the console method up at each call: quieten below the level at the console itself.
sdkLogger.setLevel(LOG_LEVELS[logLevel]);
const consoleMethods = { trace: ["trace"], debug: ["debug", "log"], info: ["info"] };
for (const [level, methods] of Object.entries(consoleMethods)) {
    if (LOG_LEVELS.indexOf(level) < logLevel) {
        for (const method of methods) {
            console[method] = () => {};
        }
    }
}

/** A logger for the clients: only `INTEROP_LOG_LEVEL` (default "error") and above is printed. */
function quietLogger(prefix = "") {
    const logger = { getChild: (child) => quietLogger(`${prefix}${child}`) };
    LOG_LEVELS.forEach((method, level) => {
        logger[method] = level >= logLevel ? (...args) => console[method](prefix, ...args) : () => {};
    });
    return logger;
}

function required(name) {
    const value = process.env[name];
    if (!value) {
        throw new Error(`${name} is not set: run the suite with scripts/interop-js.sh`);
    }
    return value;
}

/** The homeserver's base URL, e.g. http://127.0.0.1:40123. */
export const baseUrl = required("INTEROP_HOMESERVER_URL");
/** A registration token with unlimited uses. */
export const inviteToken = required("INTEROP_INVITE_TOKEN");
/** A registration token that allows one account. */
export const singleUseToken = required("INTEROP_SINGLE_USE_TOKEN");
/** The server name: user IDs are @name:serverName. */
export const serverName = process.env.INTEROP_SERVER_NAME ?? "localhost";

export const PASSWORD = "correct horse battery staple";
const DEFAULT_TIMEOUT_MS = 20_000;

/** A fresh, unused localpart. */
export function uniqueName(prefix) {
    return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** A client with no session, as Element has on its sign-up and sign-in pages. */
export function anonymousClient() {
    return sdk.createClient({ baseUrl, logger: quietLogger() });
}

/**
 * Registers an account the way Element's sign-up page does: a first request without `auth` to
 * learn the flows and the session, then the registration-token stage through the SDK's
 * InteractiveAuth. Returns the register response (user_id, access_token, device_id).
 */
export async function register(username, { token = inviteToken, password = PASSWORD } = {}) {
    const { response } = await registerInteractively(username, [token], password);
    return response;
}

/**
 * Registers through InteractiveAuth, typing `tokens` one after the other into the token stage
 * as a person would after each refusal. Resolves with the register response and the stage
 * errors seen on the way; rejects with the last stage error once the tokens run out.
 */
export async function registerInteractively(username, tokens, password = PASSWORD) {
    const client = anonymousClient();
    const params = { username, password, initial_device_display_name: "interop" };
    const stageErrors = [];
    const remaining = [...tokens];
    let fail;
    const failed = new Promise((_, reject) => {
        fail = reject;
    });
    const auth = new sdk.InteractiveAuth({
        matrixClient: client,
        doRequest: (authDict) => client.registerRequest(authDict ? { ...params, auth: authDict } : params),
        stateUpdated: (stage, status) => {
            if (stage !== "m.login.registration_token") {
                fail(new Error(`unexpected registration stage ${stage}`));
                return;
            }
            if (status.errcode) {
                stageErrors.push(status.errcode);
                if (remaining.length === 0) {
                    const body = { errcode: status.errcode, error: `${stage}: ${status.error}` };
                    fail(new sdk.MatrixError(body, 401));
                    return;
                }
            }
            auth.submitAuthDict({ type: "m.login.registration_token", token: remaining.shift() });
        },
        requestEmailToken: () => Promise.reject(new Error("no e-mail")),
    });
    const response = await Promise.race([auth.attemptAuth(), failed]);
    return { response, stageErrors };
}

/** Logs in with a password and returns the login response. */
export async function passwordLogin(userId, password = PASSWORD, deviceName = "interop") {
    return anonymousClient().loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: userId },
        password,
        initial_device_display_name: deviceName,
    });
}

const running = new Set();

/**
 * Starts a client on a session (a register or login response) and waits for its first sync.
 * With `crypto`, the Rust crypto is initialised first (in memory, as Node has no IndexedDB).
 * Extra `createClient` options (e.g. crypto callbacks) go in `clientOpts`.
 */
export async function startClient(session, { crypto = false, clientOpts = {} } = {}) {
    const client = sdk.createClient({
        baseUrl,
        userId: session.user_id,
        accessToken: session.access_token,
        deviceId: session.device_id,
        logger: quietLogger(`[${session.user_id} ${session.device_id}] `),
        ...clientOpts,
    });
    if (crypto) {
        await client.initRustCrypto({ useIndexedDB: false });
    }
    running.add(client);
    await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: true });
    await waitFor(() => client.isInitialSyncComplete(), "the first sync");
    return client;
}

/** Registers a fresh user and starts a client for them. */
export async function newUser(prefix, options = {}) {
    const session = await register(uniqueName(prefix));
    return startClient(session, options);
}

/** Stops a client started here. */
export function stopClient(client) {
    if (running.delete(client)) {
        client.stopClient();
    }
}

/** Stops every client still running (for `after` hooks). */
export function stopAll() {
    for (const client of running) {
        stopClient(client);
    }
}

/**
 * Polls `check` until it returns a truthy value (which is returned) or throws `what` timed out.
 * Exceptions from `check` count as "not yet".
 */
export async function waitFor(check, what, timeoutMs = DEFAULT_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    let lastError;
    for (;;) {
        try {
            const value = await check();
            if (value) {
                return value;
            }
        } catch (error) {
            lastError = error;
        }
        if (Date.now() > deadline) {
            const cause = lastError ? ` (last error: ${lastError.message})` : "";
            throw new Error(`timed out waiting for ${what}${cause}`);
        }
        await sleep(50);
    }
}

/** Waits until `client` sees its own membership of `roomId` become `membership`. */
export function waitForMembership(client, roomId, membership) {
    return waitFor(
        () => client.getRoom(roomId)?.getMyMembership() === membership,
        `${client.getUserId()} to be "${membership}" in ${roomId}`,
    );
}

/** The events of the room's live timeline (decrypted ones show their clear type). */
export function timeline(client, roomId) {
    return client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
}

/** Waits for an event with this ID to reach `client`'s live timeline and returns it. */
export function waitForEvent(client, roomId, eventId) {
    return waitFor(
        () => timeline(client, roomId).find((event) => event.getId() === eventId),
        `event ${eventId} to reach ${client.getUserId()}`,
    );
}

/** Waits for a message with this body to reach `client`'s live timeline and returns its event. */
export function waitForMessage(client, roomId, body) {
    return waitFor(
        () =>
            timeline(client, roomId).find(
                (event) => event.getType() === "m.room.message" && event.getContent().body === body,
            ),
        `message "${body}" to reach ${client.getUserId()}`,
    );
}

/** Alice creates a room, invites Bob, Bob joins; both see the join. Returns the room ID. */
export async function sharedRoom(alice, bob, createOptions = {}) {
    const { room_id: roomId } = await alice.createRoom({ preset: "private_chat", ...createOptions });
    await alice.invite(roomId, bob.getUserId());
    await waitForMembership(bob, roomId, "invite");
    await bob.joinRoom(roomId);
    await waitForMembership(bob, roomId, "join");
    await waitFor(
        () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join",
        "Alice to see Bob's join",
    );
    return roomId;
}

export { sdk };
