#!/usr/bin/env bash
echo "The demo arrives with the daemon (issue: supervisord and supervisorctl)." >&2
exit 1
