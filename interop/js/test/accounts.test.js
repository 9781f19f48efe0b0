// Sign-up with an invite (registration) token through user-interactive auth, as Element's
// sign-up page drives it, refusals without a valid token, and password login.

import assert from "node:assert/strict";
import { after, test } from "node:test";

import {
    PASSWORD,
    anonymousClient,
    inviteToken,
    passwordLogin,
    register,
    registerInteractively,
    sdk,
    serverName,
    singleUseToken,
    startClient,
    stopAll,
    stopClient,
    uniqueName,
} from "./support.js";

after(stopAll);

/** Runs `request`, which must fail, and returns the MatrixError. */
async function refused(request) {
    try {
        await request();
    } catch (error) {
        assert.ok(error instanceof sdk.MatrixError, `expected a MatrixError, got ${error}`);
        return error;
    }
    assert.fail("the request succeeded");
}

function tokenValidity(client, token) {
    return client.http.request(
        sdk.Method.Get,
        "/register/m.login.registration_token/validity",
        { token },
        undefined,
        { prefix: "/_matrix/client/v1" },
    );
}

test("the sign-up page learns the flows from a request without auth", async () => {
    // Element's first request on its sign-up page carries no username, password or auth; the
    // answer must be the 401 with the flows, or Element shows "Unable to query for supported
    // registration methods".
    const client = anonymousClient();
    const error = await refused(() => client.registerRequest({ initial_device_display_name: "Element" }));
    assert.equal(error.httpStatus, 401);
    assert.ok(error.data.session, "a UIA session is offered");
    const stages = error.data.flows.map((flow) => flow.stages);
    assert.deepEqual(stages, [["m.login.registration_token"]]);
});

test("sign-up with an invite token through InteractiveAuth, then the account works", async () => {
    const username = uniqueName("signup");
    const client = anonymousClient();
    assert.equal(await client.isUsernameAvailable(username), true);

    const response = await register(username);
    assert.equal(response.user_id, `@${username}:${serverName}`);
    assert.ok(response.access_token);
    assert.ok(response.device_id);

    const alice = await startClient(response);
    const whoami = await alice.whoami();
    assert.equal(whoami.user_id, response.user_id);
    assert.equal(whoami.device_id, response.device_id);
    // The SDK turns the server's M_USER_IN_USE into `false`.
    assert.equal(await client.isUsernameAvailable(username), false);
});

test("a mistyped token is refused at its stage and the right one then succeeds", async () => {
    const username = uniqueName("typo");
    const { response, stageErrors } = await registerInteractively(username, [
        "not-a-real-token",
        inviteToken,
    ]);
    assert.deepEqual(stageErrors, ["M_UNAUTHORIZED"], "exactly one refused attempt");
    assert.equal(response.user_id, `@${username}:${serverName}`);
});

test("registration is refused without a token, with a wrong one and with a used-up one", async () => {
    const username = uniqueName("refused");
    const client = anonymousClient();
    const params = { username, password: PASSWORD };

    // No auth at all: the 401 challenge, no account.
    const challenge = await refused(() => client.registerRequest(params));
    assert.equal(challenge.httpStatus, 401);
    const session = challenge.data.session;

    // A stage the server does not offer does not complete the flow.
    const dummy = await refused(() =>
        client.registerRequest({ ...params, auth: { type: "m.login.dummy", session } }),
    );
    assert.equal(dummy.httpStatus, 401);
    assert.deepEqual(dummy.data.completed ?? [], []);

    // A wrong token: 401 with the stage's error.
    const wrong = await refused(() =>
        client.registerRequest({
            ...params,
            auth: { type: "m.login.registration_token", token: "wrong-token", session },
        }),
    );
    assert.equal(wrong.httpStatus, 401);
    assert.ok(wrong.data.errcode, "the failed stage carries an error code");
    assert.deepEqual(wrong.data.completed ?? [], []);

    // A single-use token admits one account, then no more.
    assert.deepEqual(await tokenValidity(client, singleUseToken), { valid: true });
    const first = await register(uniqueName("spend"), { token: singleUseToken });
    assert.ok(first.access_token);
    const spent = await refused(() => register(username, { token: singleUseToken }));
    assert.ok(spent.httpStatus === 401 || spent.httpStatus === 403, `status ${spent.httpStatus}`);

    // The validity endpoint agrees, and the account was never created.
    assert.deepEqual(await tokenValidity(client, singleUseToken), { valid: false });
    assert.deepEqual(await tokenValidity(client, "wrong-token"), { valid: false });
    assert.equal(await client.isUsernameAvailable(username), true);
    const login = await refused(() => passwordLogin(`@${username}:${serverName}`));
    assert.equal(login.errcode, "M_FORBIDDEN");
});

test("login with a password, a wrong password is refused, logout ends the session", async () => {
    const username = uniqueName("login");
    const registered = await register(username);
    const client = anonymousClient();

    const flows = await client.loginFlows();
    assert.ok(flows.flows.some((flow) => flow.type === "m.login.password"));

    const wrong = await refused(() => passwordLogin(registered.user_id, "not the password"));
    assert.equal(wrong.httpStatus, 403);
    assert.equal(wrong.errcode, "M_FORBIDDEN");

    // By localpart, as people type it into Element's sign-in form.
    const session = await passwordLogin(username);
    assert.equal(session.user_id, registered.user_id);
    assert.notEqual(session.device_id, registered.device_id, "a new device");

    const bob = await startClient(session);
    const devices = await bob.getDevices();
    const ids = devices.devices.map((device) => device.device_id).sort();
    assert.deepEqual(ids, [registered.device_id, session.device_id].sort());

    stopClient(bob);
    await bob.logout();
    const loggedOut = await refused(() =>
        sdk.createClient({ baseUrl: bob.baseUrl, accessToken: session.access_token, logger: bob.logger }).whoami(),
    );
    assert.equal(loggedOut.httpStatus, 401);
    assert.equal(loggedOut.errcode, "M_UNKNOWN_TOKEN");
});
