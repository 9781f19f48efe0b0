"""Patches a generated Synapse homeserver.yaml for benchmarking on loopback.

Usage: synapse_config.py HOMESERVER_YAML PORT [PG_HOST PG_PORT PG_USER PG_PASSWORD PG_DB]

Opens registration (user-interactive auth with m.login.dummy), raises every rate limit,
listens on 127.0.0.1 only and, with the PostgreSQL arguments, switches to psycopg2.
Run it with the Python of Synapse's virtual environment (PyYAML comes with Synapse).
"""

import sys

import yaml

UNLIMITED = {"per_second": 10000, "burst_count": 100000}


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    pg = sys.argv[3:]
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)

    cfg["listeners"] = [
        {
            "port": port,
            "tls": False,
            "type": "http",
            "x_forwarded": False,
            "bind_addresses": ["127.0.0.1"],
            "resources": [{"names": ["client"], "compress": False}],
        }
    ]
    cfg["report_stats"] = False
    cfg["enable_registration"] = True
    cfg["enable_registration_without_verification"] = True
    cfg["trusted_key_servers"] = []
    cfg["suppress_key_server_warning"] = True
    # Registration is setup, not a measured workload: cheap password hashing keeps setting
    # up hundreds of users quick on 2 cores.
    cfg["bcrypt_rounds"] = 4

    for key in [
        "rc_message",
        "rc_registration",
        "rc_registration_token_validity",
        "rc_joins_per_room",
        "rc_3pid_validation",
        "rc_third_party_invite",
        "rc_media_create",
        "rc_delayed_event_mgmt",
        "rc_room_creation",
        "rc_reports",
        "rc_user_directory",
        "rc_profile",
        "rc_key_requests",
        "rc_admin_redaction",
    ]:
        cfg[key] = dict(UNLIMITED)
    cfg["rc_login"] = {k: dict(UNLIMITED) for k in ["address", "account", "failed_attempts"]}
    cfg["rc_joins"] = {k: dict(UNLIMITED) for k in ["local", "remote"]}
    cfg["rc_invites"] = {k: dict(UNLIMITED) for k in ["per_room", "per_user", "per_issuer"]}
    cfg["rc_presence"] = {"per_user": dict(UNLIMITED)}

    if pg:
        host, pg_port, user, password, database = pg
        cfg["database"] = {
            "name": "psycopg2",
            "args": {
                "user": user,
                "password": password,
                "database": database,
                "host": host,
                "port": int(pg_port),
                "cp_min": 5,
                "cp_max": 10,
            },
        }

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


if __name__ == "__main__":
    main()
