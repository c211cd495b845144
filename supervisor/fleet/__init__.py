"""Many machines: every node's event log in one NATS JetStream stream (docs/design.md section 10).

``export`` is ``supervisord-export`` (one node's log into the stream, exactly once); ``reader``
is ``supervisorctl events --nats`` (the fleet stream, rendered like local events). ``records``
is the message contract (pure), ``broker`` the NATS side they share, ``daemon_link`` an asyncio
client of the daemon's socket. Only these modules import nats-py and asyncio; nothing imports
them but the two commands.
"""
