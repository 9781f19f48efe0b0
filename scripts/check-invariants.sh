#!/usr/bin/env bash
# Checks the invariants ARCHITECTURE.md states, so that they fail CI rather than stay
# sentences. Run by .ci/run; quick (cargo tree and grep only).
set -euo pipefail
cd "$(dirname "$0")/.."
failed=0
fail() { echo "invariant broken: $*" >&2; failed=1; }

# The room rules do no I/O: nothing that does reaches crates/room.
room_deps=$(cargo tree -p rhizome-room -e normal --prefix none --locked 2>/dev/null | awk '{print $1}' | sort -u)
for crate in tokio sqlx reqwest hyper axum rustls; do
  if grep -qx "$crate" <<<"$room_deps"; then fail "crates/room depends on $crate"; fi
done

# The services know the storage traits but no SQL.
service_deps=$(cargo tree -p rhizome-service -e normal --prefix none --locked 2>/dev/null | awk '{print $1}' | sort -u)
for crate in sqlx rhizome-storage-sql axum; do
  if grep -qx "$crate" <<<"$service_deps"; then fail "crates/service depends on $crate"; fi
done

# Only the api crate serves HTTP and maps errors to statuses. Below it, connections are made
# only by the code that reaches out, each through the address checks of outbound.rs: the
# federation client (the one way to other homeservers), push gateways, URL previews. HTTP
# statuses are read only where answers of other servers or gateways are.
connectors='crates/service/src/(federation/(client|discovery|testing)|push/gateway|media/(fetch|preview)|outbound)'
while IFS= read -r file; do
  if ! grep -Eq "^$connectors" <<<"$file"; then fail "$file opens HTTP connections outside the allowed modules"; fi
done < <(grep -rlE "reqwest::|hyper::|hyper_util::" crates/service/src crates/room/src crates/storage/src crates/storage-sql/src crates/core/src | sort)
readers='crates/service/src/(federation/|push/gateway|media/(fetch|preview)|outbound)'
while IFS= read -r file; do
  if ! grep -Eq "^$readers" <<<"$file"; then fail "$file handles HTTP statuses outside the allowed modules"; fi
done < <(grep -rlE "StatusCode" crates/service/src crates/room/src crates/storage/src crates/storage-sql/src crates/core/src | sort)

# Every module starts with a //! line.
while IFS= read -r file; do
  if ! head -n 1 "$file" | grep -q '^//!'; then fail "$file has no //! line at the top"; fi
done < <(find crates -path '*/target' -prune -o -name '*.rs' -path '*/src/*' -print)

# No message content in logs: log statements never name a body or content field.
if grep -rnE 'tracing::(info|warn|error|debug)!\([^)]*(body|content)\s*=' crates/*/src | grep -v '^crates/bench'; then
  fail "a log statement records message content"
fi

# A SQLite store answers a woken sync from memory (storage-sql's `recent`): every statement
# that writes a table it answers for must tell it (a `touch` of the stream write, or
# `values_changed`, or `room_changed` for a room's record). The writers below do; a new one
# fails here until it does and is listed. (staged.rs moves push actions from one table to the
# other, which changes no count. An event stored redacted by a redaction that waited for it
# tells it with its record, which carries the redaction. The notification pruner's first
# delete takes read notifications only, which count for nothing; its second tells it.)
remembered='events|room_memberships|receipts|account_data|e2ee_to_device|e2ee_device_list_changes|e2ee_one_time_keys|e2ee_fallback_keys|event_relations|event_push_actions|event_push_actions_staged|rooms|forward_extremities'
expected='crates/storage-sql/src/e2ee/keys.rs DELETE FROM e2ee_one_time_keys
crates/storage-sql/src/e2ee/keys.rs INSERT INTO e2ee_device_list_changes
crates/storage-sql/src/e2ee/keys.rs INSERT INTO e2ee_fallback_keys
crates/storage-sql/src/e2ee/keys.rs INSERT INTO e2ee_one_time_keys
crates/storage-sql/src/e2ee/keys.rs UPDATE e2ee_fallback_keys
crates/storage-sql/src/e2ee/messages.rs DELETE FROM e2ee_to_device
crates/storage-sql/src/e2ee/messages.rs INSERT INTO e2ee_to_device
crates/storage-sql/src/e2ee/messages.rs UPDATE e2ee_to_device
crates/storage-sql/src/federation.rs INSERT INTO room_memberships
crates/storage-sql/src/federation.rs INSERT INTO rooms
crates/storage-sql/src/rooms.rs DELETE FROM forward_extremities
crates/storage-sql/src/rooms.rs DELETE FROM forward_extremities
crates/storage-sql/src/rooms.rs INSERT INTO event_push_actions
crates/storage-sql/src/rooms.rs INSERT INTO event_push_actions_staged
crates/storage-sql/src/rooms.rs INSERT INTO event_relations
crates/storage-sql/src/rooms.rs INSERT INTO events
crates/storage-sql/src/rooms.rs INSERT INTO forward_extremities
crates/storage-sql/src/rooms.rs INSERT INTO forward_extremities
crates/storage-sql/src/rooms.rs INSERT INTO room_memberships
crates/storage-sql/src/rooms.rs INSERT INTO rooms
crates/storage-sql/src/rooms.rs UPDATE events
crates/storage-sql/src/rooms.rs UPDATE events
crates/storage-sql/src/rooms.rs UPDATE room_memberships
crates/storage-sql/src/rooms.rs UPDATE rooms
crates/storage-sql/src/rooms.rs UPDATE rooms
crates/storage-sql/src/rooms.rs UPDATE rooms
crates/storage-sql/src/staged.rs DELETE FROM event_push_actions_staged
crates/storage-sql/src/staged.rs INSERT INTO event_push_actions
crates/storage-sql/src/user_data.rs DELETE FROM event_push_actions
crates/storage-sql/src/user_data.rs DELETE FROM event_push_actions
crates/storage-sql/src/user_data.rs INSERT INTO account_data
crates/storage-sql/src/user_data.rs INSERT INTO receipts'
found=$(grep -rnoE "(INSERT INTO|UPDATE|DELETE FROM) ($remembered)\b" crates/storage-sql/src \
  | sed -E 's/^([^:]+):[0-9]+:/\1 /' | sort)
if [ "$found" != "$expected" ]; then
  fail "the writes of tables a SQLite store remembers changed; make each tell crate::recent, then list them here:
$(diff <(echo "$expected") <(echo "$found") || true)"
fi

if [ "$failed" -ne 0 ]; then exit 1; fi
echo "invariants hold"
