// Profiles (display name, avatar) as other members see them, room name and topic changes, and
// leaving a room.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
    newUser,
    sdk,
    sharedRoom,
    stopAll,
    waitFor,
    waitForMembership,
    waitForMessage,
} from "./support.js";

let alice;
let bob;
let roomId;

before(async () => {
    alice = await newUser("alice");
    bob = await newUser("bob");
    roomId = await sharedRoom(alice, bob);
});
after(stopAll);

test("a display name change reaches the profile and the room's member list", async () => {
    await bob.setDisplayName("Bob the Builder");
    await waitFor(
        () => alice.getRoom(roomId).getMember(bob.getUserId())?.name === "Bob the Builder",
        "Alice to see Bob's new name in the room",
    );
    const profile = await alice.getProfileInfo(bob.getUserId());
    assert.equal(profile.displayname, "Bob the Builder");
    // The member event carries it, with Bob still joined.
    const member = alice.getRoom(roomId).getMember(bob.getUserId());
    assert.equal(member.membership, "join");
    assert.equal(member.events.member.getContent().displayname, "Bob the Builder");
});

test("an uploaded avatar is set and served to the other user", async () => {
    // A 1×1 PNG.
    const png = Buffer.from(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==",
        "base64",
    );
    const { content_uri: mxc } = await bob.uploadContent(png, { type: "image/png", name: "avatar.png" });
    assert.match(mxc, /^mxc:\/\//);
    await bob.setAvatarUrl(mxc);
    await waitFor(
        () => alice.getRoom(roomId).getMember(bob.getUserId())?.getMxcAvatarUrl() === mxc,
        "Alice to see Bob's avatar",
    );

    // Authenticated media (/_matrix/client/v1/media), as current Element fetches it.
    const url = alice.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    assert.ok(url, "the SDK builds a download URL");
    const response = await fetch(url, { headers: { Authorization: `Bearer ${alice.getAccessToken()}` } });
    assert.equal(response.status, 200);
    assert.deepEqual(Buffer.from(await response.arrayBuffer()), png);
});

test("room name and topic changes are seen by the other member", async () => {
    await alice.setRoomName(roomId, "Garden club");
    await alice.setRoomTopic(roomId, "Tomatoes, mostly");
    await waitFor(() => bob.getRoom(roomId).name === "Garden club", "Bob to see the new name");
    await waitFor(
        () =>
            bob.getRoom(roomId).currentState.getStateEvents(sdk.EventType.RoomTopic, "")?.getContent().topic ===
            "Tomatoes, mostly",
        "Bob to see the new topic",
    );
    // The state endpoint agrees.
    const name = await bob.getStateEvent(roomId, sdk.EventType.RoomName, "");
    assert.deepEqual(name, { name: "Garden club" });

});

test("power levels: a promoted member may rename the room, a plain member may not", async () => {
    const rename = (name) => bob.setRoomName(roomId, name);
    const forbidden = (error) => {
        assert.equal(error.httpStatus, 403);
        assert.equal(error.errcode, "M_FORBIDDEN");
        return true;
    };
    // A plain member of a private chat may not rename it.
    await assert.rejects(rename("Bob's room"), forbidden);

    await alice.setPowerLevel(roomId, bob.getUserId(), 50);
    await waitFor(
        () => bob.getRoom(roomId).currentState.maySendStateEvent(sdk.EventType.RoomName, bob.getUserId()),
        "Bob to see his new power level",
    );
    await rename("Bob's room");
    await waitFor(() => alice.getRoom(roomId).name === "Bob's room", "Alice to see Bob's name for the room");

    await alice.setPowerLevel(roomId, bob.getUserId(), 0);
    await waitFor(
        () => !bob.getRoom(roomId).currentState.maySendStateEvent(sdk.EventType.RoomName, bob.getUserId()),
        "Bob to see his power level lowered",
    );
    await assert.rejects(rename("Bob's room again"), forbidden);
    assert.equal(alice.getRoom(roomId).name, "Bob's room");
});

test("leaving: both sides see it, and later messages are not visible to the one who left", async () => {
    await bob.sendTextMessage(roomId, "Bye for now");
    await waitForMessage(alice, roomId, "Bye for now");

    await bob.leave(roomId);
    await waitForMembership(bob, roomId, "leave");
    await waitFor(
        () => alice.getRoom(roomId).getMember(bob.getUserId())?.membership === "leave",
        "Alice to see Bob leave",
    );
    assert.equal(alice.getRoom(roomId).getJoinedMemberCount(), 1);

    const { event_id: later } = await alice.sendTextMessage(roomId, "Bob missed this");
    await assert.rejects(bob.fetchRoomEvent(roomId, later), (error) => {
        assert.equal(error.httpStatus, 404);
        return true;
    });
    await assert.rejects(bob.sendTextMessage(roomId, "Still here?"), (error) => {
        assert.equal(error.httpStatus, 403);
        return true;
    });

    // Alice can invite Bob back, and he can rejoin.
    await alice.invite(roomId, bob.getUserId());
    await waitForMembership(bob, roomId, "invite");
    await bob.joinRoom(roomId);
    await waitForMembership(bob, roomId, "join");
    await alice.sendTextMessage(roomId, "Welcome back");
    await waitForMessage(bob, roomId, "Welcome back");
});
