"""``supervisorctl completion bash``: a bash completion script, generated from the grammar.

Generated (not a file kept beside the code) so that it can never drift from the flags:
every command of :data:`supervisor.ctl_grammar.GRAMMAR`, each one's flags, the values of the
flags that have a fixed set (``--runtime``, ``--signal``, ``--type``, ``--filter``), files
for ``--env-file`` and directories for ``--rootfs``/``--bundle``/``--root``. Container ids
come from the daemon at completion time (``supervisorctl ps -aq``, with the
``--root``/``--socket`` already typed), quietly: no daemon means no ids, never an error on the
terminal.

Install: ``source <(supervisorctl completion bash)`` in ``~/.bashrc``, or save the output as
``/etc/bash_completion.d/supervisorctl``.
"""

from __future__ import annotations

import argparse

from supervisor import ctl_grammar

__all__ = ["bash_script"]

_HEAD = r"""# bash completion for supervisorctl (Tether), made by `supervisorctl completion bash`
_supervisorctl_ids() {
    local -a target=()
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --root|--socket) target+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}") ;;
            --root=*|--socket=*) target+=("${COMP_WORDS[i]}") ;;
        esac
    done
    "${COMP_WORDS[0]}" "${target[@]}" ps -aq 2>/dev/null
}

_supervisorctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local i cmd="" cmd_at=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --root|--socket) ((i++)) ;;
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; cmd_at=$i; break ;;
        esac
    done
    case $prev in
        --root|--rootfs|--bundle|-w|--cwd|--workdir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --socket|--env-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--root --socket --version --help" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "__COMMANDS__" -- "$cur"))
        fi
        return
    fi
    local flags="" values="" ids=1
    case $cmd in
__CASES__
    esac
    if [[ -n $values ]]; then
        COMPREPLY=($(compgen -W "$values" -- "$cur")); return
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur")); return
    fi
    case $cmd in
        run|create) return ;;  # the command to run: leave it to bash's default
        exec) (( COMP_CWORD > cmd_at + 1 )) && [[ ${COMP_WORDS[COMP_CWORD-1]} != -* ]] && return ;;
        help) COMPREPLY=($(compgen -W "__COMMANDS__" -- "$cur")); return ;;
    esac
    if ((ids)); then
        COMPREPLY=($(compgen -W "$(_supervisorctl_ids)" -- "$cur"))
    fi
}
complete -o default -F _supervisorctl supervisorctl
"""

#: Flags whose values are a fixed set worth offering.
_VALUES = {
    "--runtime": "process runc crun",
    "-s": "TERM KILL INT HUP QUIT USR1 USR2 STOP CONT",
    "--signal": "TERM KILL INT HUP QUIT USR1 USR2 STOP CONT",
    "--stop-signal": "TERM KILL INT HUP QUIT USR1 USR2",
    "--filter": "state=running state=stopped state=created label= id= name= exited=",
    "-f": "state=running state=stopped state=created label= id= name= exited=",
    "--type": ("supervisor container task shim task.exit task.start task.create task.oom "
               "container.create container.delete container.restart container.health"),
}
#: Commands that take no container id.
_NO_IDS = {"run", "create", "ps", "events", "status", "info", "shutdown", "completion"}


def _flags(p: argparse.ArgumentParser) -> list[str]:
    return sorted({opt for action in p._actions for opt in action.option_strings
                   if action.help != argparse.SUPPRESS})


def bash_script() -> str:
    cases = []
    for name in ctl_grammar.GRAMMAR:
        p = ctl_grammar.command_parser(name)
        flags = _flags(p)
        value_cases = [f"{flag}) values=\"{_VALUES[flag]}\" ;;" for flag in flags
                       if flag in _VALUES and not (flag == "-f" and name != "ps")]
        lines = [f"        {name})", f"            flags=\"{' '.join(flags)}\""]
        if name in _NO_IDS:
            lines.append("            ids=0")
        if value_cases:
            lines.append("            case $prev in " + " ".join(value_cases) + " esac")
        lines.append("            ;;")
        cases.extend(lines)
    commands = " ".join(name for name in ctl_grammar.GRAMMAR)
    return _HEAD.replace("__CASES__", "\n".join(cases)).replace("__COMMANDS__", commands)
