"""Reading a server's output for the 0.1.x refusals at start (t3code-contract.md, "T3 Code 0.1.x")."""

from t3track.host.startlog import diverged_marker, host_refusal

OWNED = "[03:00:01.200] ERROR (#1): A T3 Code server already owns /home/alice/.t3. Finish active agent work, stop it."


def test_a_refusal_that_ended_the_last_start_is_found_with_what_to_do():
    line, hint = host_refusal("[03:00:00.100] INFO (#1): Listening on http://127.0.0.1:3773\n" + OWNED + "\n")
    assert line.startswith("A T3 Code server already owns /home/alice/.t3") and "stop it" in hint


def test_a_refusal_an_older_start_logged_before_a_server_listened_again_is_not_tonights():
    log = OWNED + "\n[03:00:05.000] INFO (#1): Listening on http://127.0.0.1:3773\nT3 Code server is ready.\n"
    assert host_refusal(log) is None


def test_both_wordings_of_the_migration_history_warning_are_found():
    assert diverged_marker("x\nWARN Recognized legacy migration history; preserving recorded ids")[1] \
        == "Recognized legacy migration history"
    assert diverged_marker("WARN Database migration history diverges from this build; …")[0] == 5
    assert diverged_marker("INFO Migrations ran successfully") is None
