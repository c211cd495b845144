"""The plain XML-RPC codec (supervisor/sv_xmlrpc.py) against the standard library's: the same
values from any document, the same errors, and the same bytes for any result. The early server
answers Supervisor's tools with it before the daemon has loaded ``xmlrpc.client``."""

from __future__ import annotations

import xmlrpc.client as xc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import sv_xmlrpc as X

scalars = st.one_of(st.booleans(), st.integers(-(2**31), 2**31 - 1), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _outcome(load: Any, body: bytes) -> Any:
    try:
        return load(body)
    except X.BadRequest as exc:
        return ("BadRequest", str(exc))


@settings(max_examples=300, deadline=None)
@given(values)
def test_a_result_is_written_as_xmlrpc_client_writes_it(value: Any) -> None:
    assert X.dump_result(value) == xc.dumps((X._capped(value),), methodresponse=True).encode()


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=30), st.lists(values, max_size=3))
def test_a_call_is_read_as_xmlrpc_client_reads_it(method: str, params: list[Any]) -> None:
    body = xc.dumps(tuple(params), method).encode()
    assert _outcome(X.load_call, body) == _outcome(X._load_standard, body)


@pytest.mark.parametrize("body", [
    b"",
    b"<methodCall><methodName>x</methodName><params>",  # cut short
    b"<methodCall><params></params></methodCall>",  # no methodName
    b"<methodCall><methodName></methodName></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><int>1x</int></value>"
    b"</param></params></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><boolean>2</boolean>"
    b"</value></param></params></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><double>1.5</double>"
    b"</value></param></params></methodCall>",  # not plain: the standard library's value
    b"<methodCall><methodName>x</methodName><params><param><value><nil/></value>"
    b"</param></params></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><bogus>1</bogus>"
    b"</value></param></params></methodCall>",
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><methodCall><methodName>&a;'
    b"</methodName></methodCall>",
    b"<methodCall><methodName>x</methodName></methodCall><methodCall/>",
    b"<methodCall a='1'><methodName>x</methodName></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><struct><member>"
    b"<value><int>1</int></value></member></struct></value></param></params></methodCall>",
])
def test_odd_and_malformed_calls_get_the_standard_librarys_value_or_error(body: bytes) -> None:
    assert _outcome(X.load_call, body) == _outcome(X._load_standard, body)


def test_a_fault_is_written_as_xmlrpc_client_writes_it() -> None:
    assert X.dump_fault(10, "BAD_NAME: <a&b>") == xc.dumps(xc.Fault(10, "BAD_NAME: <a&b>")
                                                            ).encode()


def test_the_uptime_is_datetimes() -> None:
    import datetime

    from supervisor.sv_processes import uptime

    for seconds in [*range(0, 200_000, 37), 86_399, 86_400, 86_401, 172_800, 10**8]:
        assert uptime(seconds) == str(datetime.timedelta(seconds=seconds))


def test_the_early_http_phrases_are_https() -> None:
    from http import HTTPStatus

    from supervisor import httpreq

    for status, phrase in httpreq._PHRASES.items():
        assert HTTPStatus(status).phrase.encode() == phrase
