#!/usr/bin/env python3
"""Drive `encore chat` through a pseudo-terminal as a person would: ask, get a streamed
answer, ask a follow-up that needs the history, stop a long answer with Ctrl-C, /reset, and
leave with Ctrl-D. Exits non-zero with the transcript when something is off.
Used by crates/cli/tests/chat_repl.rs.   usage: pty_chat.py ENCORE_BINARY"""
import os, pty, select, sys, time

binary = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "chat", "--max-tokens", "400"])

transcript = b""
cursor = 0  # everything before it has been matched already

def read_until(marker, timeout=120):
    """The output from the last match up to and including `marker`."""
    global transcript, cursor
    end = time.time() + timeout
    while time.time() < end:
        at = transcript.find(marker, cursor)
        if at >= 0:
            seen, cursor = transcript[cursor:at + len(marker)], at + len(marker)
            return seen
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            transcript += chunk
    fail(f"no {marker!r} within {timeout}s")

def fail(why):
    sys.stderr.write(f"pty_chat: {why}\n--- transcript ---\n{transcript.decode(errors='replace')}\n")
    sys.exit(1)

def send(s):
    os.write(fd, s)

read_until(b"Ctrl-D exits")  # the banner (the loading bar draws "=>" before it)
read_until(b"> ")
send(b"What is the capital of France?\r")
answer = read_until(b"\n> ")
if b"Paris" not in answer:
    fail("the first answer does not name Paris")
send(b"Write a very long story about a dragon and a knight.\r")
time.sleep(1.0)  # let it stream a little
send(b"\x03")  # Ctrl-C stops the answer, not the program
read_until(b"[stopped]")
read_until(b"> ")
send(b"/reset\r")
read_until(b"(conversation reset)")
read_until(b"> ")
send(b"\x04")  # Ctrl-D at the prompt ends the session
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code != 0:
    fail(f"exit status {code}")
print("pty_chat: ok")
