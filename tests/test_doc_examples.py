"""The shell examples of README.md and docs/*.md run, as written, against a live server.

What is run. The examples are read from the documents at test time, never copied here:
every fenced block labelled ```sh, ```bash, ```shell or ```console (for console, the
lines after a `$ ` prompt) that calls the server with `curl` at `localhost:8000` or
`127.0.0.1:8000`. The blocks of README.md run first, then those of docs/*.md in name
order, each document's blocks in order in one `bash -eo pipefail`, against one
`kassa serve` this test starts with its embedded PostgreSQL, Redis and broker in a fresh
temporary working directory, so that `.kassa/admin_api_key` is where the README says it is.
So a document's blocks share its shell variables (`$KEY`, `$RCP`...), and the documents
share the server: docs/api.md's examples use the accounts the README's "Using it" made.
The one change made to the text: `:8000` in those two addresses becomes the free port the
server was given (8000 may be taken on a shared machine).

Receipt codes are never placeholders: an example that needs one takes it from an earlier
answer into a shell variable with a one-line `python3 -c` (see README.md, "Using it").

What fails. A command that exits non-zero (curl cannot connect, the python one-liner finds
no receipt code); and any answer carrying an error that its example does not announce. A
`curl` shell function records every response (status from `-D`, body from stdout, which it
passes on unchanged, so `$(curl ...)` works as written). An answer is an error when its
status is 400 or more, or its JSON holds an `"error"` object anywhere (the items of a
batch included; `"error": null` is no error, nor one without a `code`, as in the OpenAPI
document's schemas). It is announced when the command's own lines
or the comment lines right above it name its code or its status (`# 404 not_found`);
and an announced code that no answer of that command carries fails too.

What is not run, and why, by rule (test_every_server_block_runs_or_says_why):
- blocks that do not call the server (`make run`, `make test`, `export ...`, `kassa verify`
  on a production database, `docker build`): they are not examples of the API;
- a block that does call it or starts one (`curl`, `wrk`, `:8000`, `kassa serve` in a
  command) but cannot run here is marked, on the line right above its fence, with
  `<!-- doc-example: skip: <reason> -->` (hosts such as `kafka:9092`, `--host 0.0.0.0`
  behind a load balancer, a profiling session). Such a block without a marker fails.

Fast part (no server): every curl command in every shell block, run or not, that sends a
body with `-d`/`--data*` also says `--json` or `Content-Type: application/json` (a bare `-d`
is a form, 415 at Kassa).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.http.errors import HTTP_STATUS
from tests.fixtures.kassa_server import KassaProcess, start_kassa

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
SKIP = re.compile(r"^\s*<!--\s*doc-example:\s*skip:\s*(?P<reason>.*?)\s*-->\s*$")
SERVER = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")
SERVER_RELATED = re.compile(r"\bcurl\b|\bwrk\b|:8000\b|\bkassa serve\b")
DATA_OPTION = re.compile(r"^(-[A-Za-z]*d|--data(-raw|-binary|-ascii|-urlencode)?)(=.*)?$")


@dataclass
class Command:
    start: int  # line numbers in the document, 1-based, inclusive
    end: int
    text: str  # the command as written (its lines joined by newlines)
    comments: list[str] = field(default_factory=list)  # the comment lines right above it


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence
    lang: str
    lines: list[str]  # the shell text (prompts and console output removed)
    skip: str | None  # the reason of a skip marker
    commands: list[Command] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def code(self) -> str:
        return "\n".join(c.text for c in self.commands)

    @property
    def calls_the_server(self) -> bool:
        return any(re.search(r"\bcurl\b", c.text) and SERVER.search(c.text) for c in self.commands)

    @property
    def server_related(self) -> bool:
        return any(SERVER_RELATED.search(code_of(c.text)) for c in self.commands)


def code_of(text: str) -> str:
    """The text without its shell comments (a `#` that starts a word, outside quotes)."""
    out, quote = [], None
    for line in text.splitlines():
        kept, i = [], 0
        while i < len(line):
            char = line[i]
            if quote:
                kept.append(char)
                if char == "\\" and quote == '"' and i + 1 < len(line):
                    kept.append(line[i + 1])
                    i += 1
                elif char == quote:
                    quote = None
            elif char == "#" and (i == 0 or line[i - 1].isspace()):
                break
            else:
                kept.append(char)
                if char in "'\"":
                    quote = char
                elif char == "\\" and i + 1 < len(line):
                    kept.append(line[i + 1])
                    i += 1
            i += 1
        out.append("".join(kept))
    return "\n".join(out)


def split_commands(lines: list[str], first_line: int) -> list[Command]:
    """Complete commands: a line ending in `\\`, an open quote or an open `(` goes on."""
    commands: list[Command] = []
    comments: list[str] = []
    current: list[str] = []
    start = 0
    for offset, line in enumerate(lines):
        number = first_line + offset
        if not current:
            if not line.strip():
                comments = []
                continue
            if line.lstrip().startswith("#"):
                comments.append(line)
                continue
            start = number
        current.append(line)
        code = code_of("\n".join(current))
        if _open(code):
            continue
        commands.append(Command(start, number, "\n".join(current), comments))
        current, comments = [], []
    if current:
        commands.append(Command(start, first_line + len(lines) - 1, "\n".join(current), comments))
    return commands


def _open(code: str) -> bool:
    """Whether shell text (comments removed) needs more lines: a trailing backslash, an
    unclosed quote or an unclosed parenthesis."""
    quote, depth, i = None, 0, 0
    while i < len(code):
        char = code[i]
        if quote:
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "\\":
            if i + 1 == len(code):
                return True
            i += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        i += 1
    return quote is not None or depth > 0 or code.rstrip().endswith("\\")


def shell_blocks(doc: Path) -> list[Block]:
    text = doc.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(text):
        opening = FENCE.match(text[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        end = i + 1
        while end < len(text) and text[end].strip() != "```":
            end += 1
        if lang in SHELLS:
            above = next((text[j] for j in range(i - 1, -1, -1) if text[j].strip()), "")
            marker = SKIP.match(above)
            body = [line.removeprefix(indent) for line in text[i + 1:end]]
            if lang == "console":  # commands follow `$ `; their continuations too
                kept, going = [], False
                for line in body:
                    if line.startswith("$ "):
                        kept.append(line[2:])
                        going = _open(code_of(line[2:]))
                    elif going:
                        kept.append(line)
                        going = _open(code_of("\n".join(kept)))
                    else:
                        kept.append("")  # output: keeps the line numbers
                body = kept
            block = Block(doc, i + 1, lang, body, marker.group("reason") if marker else None)
            block.commands = split_commands(body, i + 2)
            blocks.append(block)
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for doc in DOCS for block in shell_blocks(doc)]


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.calls_the_server and b.skip is None]


def form_posts(command: str) -> bool:
    """A curl command that sends a body with -d/--data but not as JSON."""
    code = code_of(command).replace("\\\n", " ")
    for part in re.split(r"\||;|&&|\$\(|`", code):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        if "curl" not in words:
            continue
        words = words[words.index("curl"):]
        sends = any(DATA_OPTION.match(w) for w in words)
        headers = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-H", "--header")]
        headers += [w[2:] for w in words if w.startswith("-H") and len(w) > 2]
        json_type = any(re.match(r"(?i)content-type:\s*application/([\w.+-]+\+)?json", h)
                        for h in headers)
        if sends and "--json" not in words and not json_type:
            return True
    return False


# ---------------------------------------------------------------- fast: no server


def test_the_splitter_and_the_form_check() -> None:
    lines = ["# make one", "A=$(curl -s x \\", "  --json '{\"a\":", "  1}' | cat)",
             "", "# 404 not_found", "curl -s y; curl -s z  # two", "echo '#' \"it's\""]
    commands = split_commands(lines, 10)
    assert [(c.start, c.end, c.comments) for c in commands] == [
        (11, 13, ["# make one"]), (16, 16, ["# 404 not_found"]), (17, 17, [])]
    assert code_of(lines[6]) == "curl -s y; curl -s z  "
    assert form_posts("curl -s -XPOST x -d '{}'")
    assert form_posts("curl -s -XPOST x --data-raw '{}' -H 'Accept: application/json'")
    assert form_posts("R=$(curl -sd '{}' x | python3 -c 'print(1)')")
    assert not form_posts("curl -s -XPOST x --json '{}'")
    assert not form_posts("curl -s x -H 'Content-Type: application/json' \\\n  -d '{}'")
    assert not form_posts("curl -s x -H 'content-type: application/problem+json' --data '{}'")
    assert not form_posts("curl -s localhost:8000/healthz")


def test_console_prompts_and_skip_markers(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("text\n<!-- doc-example: skip: needs kafka:9092 -->\n```console\n"
                   "$ curl -s localhost:8000/healthz\n{\"status\":\"ok\"}\n$ echo a \\\n"
                   "  b\na b\n```\n\n```sh\nmake run\n```\n")
    first, second = shell_blocks(doc)
    assert first.skip == "needs kafka:9092" and second.skip is None
    assert [c.text for c in first.commands] == ["curl -s localhost:8000/healthz", "echo a \\\n  b"]
    assert [c.start for c in first.commands] == [4, 6]
    assert first.calls_the_server and first.server_related
    assert not second.calls_the_server and not second.server_related


def test_the_documents_have_server_examples() -> None:
    run = runnable(all_blocks())
    assert {b.doc.name for b in run} >= {"README.md", "api.md"}
    assert sum(len(b.commands) for b in run) >= 25


def test_every_server_block_runs_or_says_why() -> None:
    unsaid = [b.where for b in all_blocks()
              if b.server_related and not b.calls_the_server and b.skip is None]
    assert unsaid == [], ("these blocks call or start a server but are not run: make them "
                          "call it with curl at localhost:8000, or mark them "
                          "<!-- doc-example: skip: <reason> --> on the line above")
    empty = [b.where for b in all_blocks() if b.skip is not None and not b.skip]
    assert empty == [], "a skip marker says why"


def test_no_example_posts_a_form() -> None:
    forms = [f"{b.where} (line {c.start}): {c.text}" for b in all_blocks() for c in b.commands
             if form_posts(c.text)]
    assert forms == [], ("curl -d sends application/x-www-form-urlencoded, refused with 415: "
                         "use --json, or -H 'Content-Type: application/json'")


# ---------------------------------------------------------------- slow: the examples run

RECORDER = r"""
set -eo pipefail
__doc_cmd=none
curl() {
  local record rc=0
  record=$(mktemp -d "$DOCTEST_RECORDS/$(date +%s%N)-XXXXXX")
  printf '%s' "$__doc_cmd" >"$record/cmd"
  command curl -D "$record/headers" "$@" >"$record/out" || rc=$?
  cat "$record/out"
  printf '%s' "$rc" >"$record/rc"
  return "$rc"
}
"""


@dataclass
class Answer:
    command: Command
    block: Block
    status: int
    body: str

    def errors(self) -> list[str]:
        """Error codes (or statuses) this answer carries."""
        found: list[str] = []
        try:
            found += list(_error_codes(json.loads(self.body)))
        except ValueError:
            pass
        if self.status >= 400 and not found:
            found.append(str(self.status))
        return found


def _error_codes(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "error" and isinstance(item, dict) and "code" in item:
                yield str(item.get("code"))
            else:
                yield from _error_codes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _error_codes(item)


def announced(command: Command, status: int, code: str) -> bool:
    window = "\n".join([*command.comments, command.text])
    return code in window or re.search(rf"\b{status}\b", window) is not None


def announced_codes(command: Command) -> set[str]:
    window = "\n".join([*command.comments, *re.findall(r"#.*", command.text)])
    return {code for code in HTTP_STATUS if re.search(rf"\b{code}\b", window)}


def script_of(blocks: list[Block], port: int) -> tuple[str, dict[str, tuple[Block, Command]]]:
    """One bash script running these blocks' commands in order, each preceded by the
    assignment that lets the recorder say which command made a request."""
    ids: dict[str, tuple[Block, Command]] = {}
    parts = [RECORDER]
    for block in blocks:
        for command in block.commands:
            ident = f"{block.doc.name}:{command.start}"
            ids[ident] = (block, command)
            parts.append(f"__doc_cmd={shlex.quote(ident)}")
            parts.append(SERVER.sub(lambda m: f"{m.group(1)}:{port}", command.text))
    return "\n".join(parts) + "\n", ids


def parse_record(record: Path) -> tuple[str, int, str]:
    headers = record.joinpath("headers").read_text(errors="replace") \
        if record.joinpath("headers").exists() else ""
    statuses = re.findall(r"^HTTP/[\d.]+ (\d{3})", headers, re.M)
    body = record.joinpath("out").read_text(errors="replace")
    while body.startswith("HTTP/"):  # curl -i: the headers come first
        _, _, body = body.partition("\r\n\r\n")
    return record.joinpath("cmd").read_text(), int(statuses[-1]) if statuses else 0, body


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[KassaProcess, Path]]:
    """`kassa serve` with everything embedded, its working directory a fresh one holding
    `.kassa` (no KASSA_* from the caller's environment reaches it)."""
    workdir = Path(tempfile.mkdtemp(prefix="kassa-doc-examples-"))
    kassa = start_kassa({}, workers=1, data_dir=workdir / ".kassa", cwd=workdir, timeout_s=180)
    yield kassa, workdir
    assert kassa.stop() == 0, kassa.log_tail()


def run_examples(blocks: list[Block], kassa: KassaProcess, workdir: Path) -> list[str]:
    """Run the blocks document by document (one bash each); what went wrong."""
    failures: list[str] = []
    seen: dict[str, list[Answer]] = {}
    for doc in dict.fromkeys(b.doc for b in blocks):
        doc_blocks = [b for b in blocks if b.doc == doc]
        records = Path(tempfile.mkdtemp(prefix="records-", dir=workdir))
        script, ids = script_of(doc_blocks, kassa.port)
        run = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True,
                             text=True, timeout=300,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(workdir),
                                  "DOCTEST_RECORDS": str(records)})
        answers = []
        for record in sorted(records.iterdir()):
            ident, status, body = parse_record(record)
            block, command = ids[ident]
            answers.append(Answer(command, block, status, body))
            seen.setdefault(ident, []).append(answers[-1])
        if run.returncode != 0:
            last = answers[-1] if answers else None
            failures.append(
                f"{doc.name}: the examples stopped with exit code {run.returncode}"
                + (f" after {last.block.doc.name}:{last.command.start}" if last else "")
                + f"\nstderr:\n{run.stderr[-3000:]}\nstdout (end):\n{run.stdout[-2000:]}")
        failures.extend(
            f"{answer.block.doc.name}:{answer.command.start}: answered {answer.status} {code}, "
            f"which the example does not announce:\n  {answer.command.text}\n  -> {answer.body[:500]}"
            for answer in answers for code in answer.errors()
            if not announced(answer.command, answer.status, code))
    for block in blocks:
        for command in block.commands:
            ident = f"{block.doc.name}:{command.start}"
            got = {code for answer in seen.get(ident, []) for code in answer.errors()}
            failures.extend(f"{ident}: announces {code}, but no answer carries it:\n  {command.text}"
                            for code in announced_codes(command) - got)
    return failures


@pytest.mark.slow
def test_the_examples_run_against_a_live_server(served: tuple[KassaProcess, Path]) -> None:
    kassa, workdir = served
    assert (workdir / ".kassa" / "admin_api_key").exists()
    failures = run_examples(runnable(all_blocks()), kassa, workdir)
    assert not failures, "\n\n".join(failures) + f"\n\nserver log:\n{kassa.log_tail(30)}"


@pytest.mark.slow
def test_an_unannounced_error_or_a_stop_fails(served: tuple[KassaProcess, Path]) -> None:
    """The checks above catch what they are for, on a document made here."""
    kassa, workdir = served
    doc = workdir / "bad.md"
    doc.write_text("""```sh
KEY=$(cat .kassa/admin_api_key)
curl -s -XPOST localhost:8000/v1/accounts -H "Authorization: Bearer $KEY" -d '{"currency": "USD"}'
# 404 not_found
curl -s localhost:8000/v1/accounts/nobody -H "Authorization: Bearer $KEY"
# announced, but it is there: 404 not_found
curl -s localhost:8000/v1/accounts/@world:USD -H "Authorization: Bearer $KEY"
curl -s localhost:8000/v1/transactions/batch -H "Authorization: Bearer $KEY" \\
  --json '{"transactions": [{"type": "deposit", "currency": "USD", "destination": "nobody", "amount": 1}]}'
```

```sh
curl -s localhost:8000/healthz
R=$(curl -s localhost:8000/healthz | python3 -c 'import json, sys; print(json.load(sys.stdin)["receipt_code"])')
```
""")
    failures = run_examples(shell_blocks(doc), kassa, workdir)
    assert len(failures) == 4, "\n\n".join(failures)
    assert "answered 415 unsupported_media_type" in failures[1]  # the form
    assert "answered 202 account_not_found" in failures[2]  # a batch item
    assert "stopped with exit code 1" in failures[0] and "KeyError" in failures[0]
    assert "bad.md:7: announces not_found" in failures[3]
