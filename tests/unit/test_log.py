"""eightys.log.user_traceback: tracebacks shown to users keep their frames only."""

from __future__ import annotations

import os

from eightys.log import user_traceback

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "eightys", "lua")


def test_framework_frames_are_dropped() -> None:
    text = ("app.lua:3: boom\nstack traceback:\n"
            "\t[C]: in function 'error'\n"
            "\tapp.lua:3: in function <app.lua:2>\n"
            "\t[C]: in function 'xpcall'\n"
            "\teightys/lua/eightys/http.lua:516: in function <eightys/lua/eightys/http.lua:514>\n"
            f"\t{LIB}/bootstrap.lua:158: in function 'run_file'\n"
            "\t...ork/wt/eightys/lua/eightys/httpd.lua:551: in function 'run_main'\n"
            "\t(...tail calls...)\n"
            "\tserver/http.lua:9: in main chunk")
    assert user_traceback(text) == ("app.lua:3: boom\nstack traceback:\n"
                                    "\tapp.lua:3: in function <app.lua:2>\n"
                                    "\tserver/http.lua:9: in main chunk")


def test_only_framework_frames_leave_the_message() -> None:
    text = "x.lua:1: oops\nstack traceback:\n\t[C]: in function 'error'\n\t[C]: in ?"
    assert user_traceback(text) == "x.lua:1: oops"


def test_text_without_a_traceback_is_unchanged() -> None:
    assert user_traceback("handler timeout after 30 s: GET /x") == \
        "handler timeout after 30 s: GET /x"
