"""Split SQL migration text into statements, per dialect.

The splitter is used to run non-transactional migrations one statement at a
time, to map a database error back to a statement and line of the file, and to
detect explicit transaction control in a file.

It is a lexer-level splitter, not a parser: it knows each dialect's quoting and
comment rules, the MySQL client's ``DELIMITER`` convention, and enough about
compound statements (``BEGIN ... END`` bodies that are not quoted) to keep them
whole:

* PostgreSQL: ``CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC ... END``
  (the heuristic psql 14+ uses).
* MySQL/MariaDB: ``CREATE [DEFINER=...] PROCEDURE|FUNCTION|TRIGGER|EVENT ...
  BEGIN ... END`` written without a ``DELIMITER`` change, and MariaDB's
  top-level ``BEGIN NOT ATOMIC ... END``.
* SQLite: ``CREATE [TEMP] TRIGGER ... BEGIN ... END``, using the rule of
  ``sqlite3_complete()``: inside a trigger only a ``;`` that directly follows
  ``END`` which directly follows ``;`` ends the statement.  (SQLite accepts
  ``begin``/``end`` as column names, so counting them would be wrong.)

In PostgreSQL and MySQL bodies, ``BEGIN`` and ``END`` count only where a
statement can start (after ``;``, ``BEGIN``, ``THEN``, a label, ...: see
``_MY_BLOCK_KEYWORDS``), so that columns named ``begin`` or ``end`` are
harmless there too.

Performance: the scan never loops over characters in Python.  Compiled regular
expressions, whose top-level alternatives all start with a literal character so
that the regex engine can skip uninteresting text at C speed, jump from one
interesting token to the next; quoted strings are consumed whole by the regex
engine.  Line numbers are counted incrementally between statement starts.
The regexes are compiled on first use, for the dialect at hand only (all of them
take ~10 ms to compile, which a run would pay at every start).
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cache, lru_cache
from typing import Any, Literal, get_args

__all__ = [
    "Dialect",
    "SplitError",
    "Statement",
    "is_transaction_control",
    "iter_statements",
    "line_at",
    "split_statements",
    "statement_index_at",
]

Dialect = Literal["postgres", "mysql", "sqlite"]

_DIALECTS: frozenset[str] = frozenset(get_args(Dialect))


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a SQL text.

    ``text`` is the statement without its terminating delimiter, stripped of
    surrounding whitespace and of leading comments; comments inside (and
    trailing comments before the delimiter) are kept verbatim.
    ``sql[start:end] == text`` for the ``sql`` it was split from.
    """

    text: str
    line: int
    start: int
    end: int


class SplitError(ValueError):
    """The SQL text cannot be split (unterminated quote or comment, bad DELIMITER)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.message = message
        self.line = line

    def __reduce__(self) -> tuple[type[SplitError], tuple[str, int]]:
        return (type(self), (self.message, self.line))


# --------------------------------------------------------------------------
# Regular expressions
# --------------------------------------------------------------------------


# A character that can continue an unquoted identifier: ASCII word characters,
# "$" and anything non-ASCII (all three dialects accept non-ASCII letters).
# Spelled as an ASCII class plus [^\x00-\x7f]: a class with the range
# \x80-\U0010ffff takes ~10 ms to compile, which showed in every CLI start.
def _one_of(ascii_chars: str) -> str:
    return rf"(?:[{ascii_chars}]|[^\x00-\x7f])"


_IDC_ASCII = "0-9A-Za-z_$"
_IDC = _one_of(_IDC_ASCII)

_NONWS = re.compile(r"\S")

# The regexes below never repeat a group once per character: the regex engine
# keeps state for every iteration of a group, so that would cost memory in
# proportion to the input.  Comments are matched atomically (the lookahead +
# backreference idiom) so that a failing match cannot backtrack into them.
_atomic_names = itertools.count()


def _atomic(pattern: str) -> str:
    name = f"_a{next(_atomic_names)}"
    return rf"(?=(?P<{name}>{pattern}))(?P={name})"


def _c_comment() -> str:  # non-nesting /* ... */
    return _atomic(r"/\*[\s\S]*?\*/")


def _my_c_comment() -> str:  # not a /*! or /*M! executable comment
    return _atomic(r"/\*(?!M?!)[\s\S]*?\*/")


# A line comment runs to the end of the line, so it cannot match in two ways.
_PG_LINE_COMMENT = r"--[^\n\r]*(?![^\n\r])"
_LITE_LINE_COMMENT = r"--[^\n]*(?![^\n])"
_MY_LINE_COMMENT = r"(?:--(?=[\x00-\x20\x7f]|\Z)|\#)[^\n]*(?![^\n])"

# Whitespace and comments only (used with fullmatch between a ';' and an END).
_PG_BLANK = rf"\s*(?:(?:{_PG_LINE_COMMENT}|{_c_comment()})\s*){{0,64}}"


def _my_blank() -> str:
    return rf"\s*(?:(?:{_MY_LINE_COMMENT}|{_my_c_comment()})\s*){{0,64}}"


_MY_BLANK = _my_blank()
_LITE_BLANK = rf"\s*(?:(?:{_LITE_LINE_COMMENT}|{_c_comment()})\s*){{0,64}}"

_IDENT_END = rf"(?!{_IDC})"


# Separators between the words of a statement head: the end of a word, then
# whitespace and (a few) comments.
def _pg_sep() -> str:
    return rf"{_IDENT_END}\s*(?:(?:{_PG_LINE_COMMENT}|{_c_comment()})\s*){{0,64}}"


def _lite_sep() -> str:
    return rf"{_IDENT_END}\s*(?:(?:{_LITE_LINE_COMMENT}|{_c_comment()})\s*){{0,64}}"


def _my_sep() -> str:
    # mysqldump wraps words in executable comments: /*!50003 CREATE*/
    return rf"(?:\s*(?:{_MY_LINE_COMMENT}|{_my_c_comment()}|/\*M?!\d*|\*/)){{0,64}}\s*"


_PG_HEAD = (
    rf"(?i:create){_pg_sep()}(?:(?i:or){_pg_sep()}(?i:replace){_pg_sep()})?"
    rf"(?i:function|procedure|rule){_IDENT_END}"
)
_MY_USER_PART = (
    r"(?:'[^'\\]*(?:\\[\s\S][^'\\]*){0,16}'|\"[^\"\\]*(?:\\[\s\S][^\"\\]*){0,16}\""
    r"|`[^`]*(?:``[^`]*){0,16}`|(?:[0-9A-Za-z_$.%\-]|[^\x00-\x7f])+)"
)
_MY_DEFINER = (
    rf"(?i:definer)\s*=\s*(?:(?i:current_user)(?:\s*\(\s*\))?{_IDENT_END}"
    rf"|{_MY_USER_PART}(?:\s*@\s*{_MY_USER_PART})?)"
)
_MY_HEAD = (
    rf"(?:/\*M?!\d*\s*)?(?i:create){_IDENT_END}{_my_sep()}"
    rf"(?:(?i:or){_IDENT_END}{_my_sep()}(?i:replace){_IDENT_END}{_my_sep()})?"
    rf"(?:{_MY_DEFINER}{_my_sep()})?"
    rf"(?:(?i:sql){_IDENT_END}{_my_sep()}(?i:security){_IDENT_END}{_my_sep()}"
    rf"[A-Za-z]+{_IDENT_END}{_my_sep()})?"
    rf"(?:(?i:aggregate){_IDENT_END}{_my_sep()})?"
    rf"(?i:procedure|function|trigger|event){_IDENT_END}"
    rf"|(?i:begin){_IDENT_END}{_my_sep()}(?i:not){_IDENT_END}{_my_sep()}"
    rf"(?i:atomic){_IDENT_END}"
)
_LITE_HEAD = (
    rf"(?:(?i:explain){_lite_sep()}(?:(?i:query){_lite_sep()}(?i:plan){_lite_sep()})?)?"
    rf"(?i:create){_lite_sep()}(?:(?i:temp|temporary){_lite_sep()}){{0,64}}"
    rf"(?i:trigger){_IDENT_END}"
)


@cache
def _my_delimiter_lines() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """The mysql client's DELIMITER command: at the start of a line, at the start of the
    text, and its argument."""
    return (
        re.compile(r"\n[ \t]*(?i:delimiter)(?=\s|\Z)"),
        re.compile(r"[ \t]*(?i:delimiter)(?=\s|\Z)"),
        re.compile(r"[ \t]*(\S*)"),
    )


def _keyword(word: str, rest: str, not_after: str) -> list[str]:
    """Regex branches for a whole-word keyword, each starting with a literal.

    Every top-level alternative of a token regex must start with a literal
    character; otherwise the regex engine cannot skip ahead at C speed.
    """
    first, tail = word[0], word[1:]
    return [
        rf"{letter}(?<!{not_after}[\s\S])(?i:{tail}{rest})(?!{_IDC})"
        for letter in (first.lower(), first.upper())
    ]


# Tokens tracked inside compound (routine) statements.  As in psql, keywords
# only count outside parentheses (so a parameter named "begin" is harmless).
#
# BEGIN opens a block, and END closes one, only where a statement can start,
# so that columns named "begin" and "end" are harmless:
# * END: directly after ';' or BEGIN (an empty block).
# * BEGIN, and a CASE statement (rather than a CASE expression): inside a block,
#   directly after ';' or BEGIN [[NOT] ATOMIC], and in mysql also after THEN or
#   ELSE (unless they belong to a CASE expression), DO, LOOP, REPEAT, a label's
#   ':' and a handler's conditions (DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN);
#   at block depth 0 (the routine's body, after its header), anywhere except
#   directly after an operator or a keyword that an expression follows
#   (RETURN, SELECT, WHERE, ...).
# "Directly after" allows whitespace and comments in between.  Only ';', BEGIN,
# CASE and END are tokens (more tokens would slow the scan down): the word
# before a BEGIN or CASE is looked at when one is found.
_NOT_AFTER = _one_of(_IDC_ASCII + ".@")  # t.end, @end are identifiers
_PARENS = [r"\(", r"\)"]
_END_KEYWORD = _keyword(
    "end", rf"(?:\s+(?:if|loop|while|repeat|for|case){_IDENT_END})?", _NOT_AFTER
)
# PostgreSQL has no nested blocks, only the body: BEGIN ATOMIC ... END.
_PG_BLOCK_KEYWORDS = [
    *_keyword("begin", rf"\s+atomic{_IDENT_END}", _NOT_AFTER),
    *_keyword("case", "", _NOT_AFTER),
    *_END_KEYWORD,
    *_PARENS,
]
_MY_BLOCK_KEYWORDS = [
    *_keyword("begin", rf"(?:\s+(?:not\s+)?atomic{_IDENT_END})?", _NOT_AFTER),
    *_keyword("case", "", _NOT_AFTER),
    *_END_KEYWORD,
    *_PARENS,
]
# DECLARE ... HANDLER FOR condition [, condition] ..., up to its statement.
# _IDC_CLASS is _IDC as one class (a repeated group would cost memory per
# character, a repeated class does not).
_IDC_CLASS = r"[^\x00-#%-/:-@\[-^`{-\x7f]"
_MY_CONDITION = (
    r"(?:sqlstate(?:\s+value)?\s*(?:'[^'\\]*'|\"[^\"\\]*\")"
    rf"|not\s+found{_IDENT_END}|{_IDC_CLASS}+|`[^`]*`)"
)


@lru_cache(maxsize=1)
def _my_handler() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The head of a handler declaration, and its conditions (compiled on first use)."""
    return (
        re.compile(rf"{_my_blank()}(?i:declare\s+(?:continue|exit|undo)\s+handler\s+for\s+)"),
        re.compile(rf"(?i:{_MY_CONDITION}(?:\s*,\s*{_MY_CONDITION}){{0,64}})"),
    )


_LITE_KEYWORDS = _keyword("end", "", _IDC)

# Token regexes.  Every alternative starts with a literal character (see
# _keyword).  A quoted string with up to 32 escapes is matched whole (the
# bounded repeat keeps the regex engine's memory bounded); longer ones, and
# unterminated ones, match only their opening quote and are finished by
# _scan_quoted().
_PG_TOKENS = [
    r";[\s;]*",  # with any empty statements that follow
    r"'[^']*(?:''[^']*){0,32}'(?!')",
    r'"[^"]*(?:""[^"]*){0,32}"(?!")',
    rf"\$(?<!{_IDC}\$)(?:{_one_of('A-Za-z_')}{_one_of('0-9A-Za-z_')}*)?\$",
    r"--[^\n\r]*(?:[\r\n]\s*--[^\n\r]*){0,64}",  # with the comment lines that follow
    r"/\*",
    "'",
    '"',
]
_LITE_TOKENS = [
    r";[\s;]*",
    r"'[^']*(?:''[^']*){0,32}'(?!')",
    r'"[^"]*(?:""[^"]*){0,32}"(?!")',
    r"`[^`]*(?:``[^`]*){0,32}`(?!`)",
    r"\[[^\]]*\]",
    r"--[^\n]*(?:\n\s*--[^\n]*){0,64}",
    r"/\*",
    "'",
    '"',
    "`",
    r"\[",
]


_MY_MORE_COMMENT_LINES = r"(?:\n\s*(?:--(?=[\x00-\x20\x7f]|\Z)|\#)[^\n]*){0,64}"


def _my_tokens(delimiter: str) -> list[str]:
    return [
        # first: the delimiter wins, as in the mysql client.  A run of ';' may
        # not swallow a newline, which could start a DELIMITER line.
        r";[;\t\r\x0b\x0c ]*" if delimiter == ";" else re.escape(delimiter),
        r"'[^'\\]*(?:(?:\\[\s\S]|'')[^'\\]*){0,32}'(?!')",
        r'"[^"\\]*(?:(?:\\[\s\S]|"")[^"\\]*){0,32}"(?!")',
        r"`[^`]*(?:``[^`]*){0,32}`(?!`)",
        # comment lines (\s* cannot end before a DELIMITER line: -- or # follow it)
        rf"--(?=[\x00-\x20\x7f]|\Z)[^\n]*{_MY_MORE_COMMENT_LINES}",
        rf"\#[^\n]*{_MY_MORE_COMMENT_LINES}",
        r"/\*M?!",
        r"/\*",
        "'",
        '"',
        "`",
    ]


@lru_cache(maxsize=64)
def _my_regex(delimiter: str) -> re.Pattern[str]:
    return re.compile("|".join(_my_tokens(delimiter)))


class _Spec:
    """A dialect's token regexes; those for routine statements are compiled when a file
    first has one (~2 ms)."""

    __slots__ = ("_routine", "blank_source", "dialect", "head", "head_chars", "mode", "normal")
    _routine: tuple[re.Pattern[str], re.Pattern[str]] | None

    def __init__(
        self,
        dialect: str,
        normal: re.Pattern[str],
        head_source: str,  # start of a compound (routine) statement
        head_chars: str,  # the characters such a head can start with
        blank_source: str,
        mode: int,  # routine mode: 1 = BEGIN/CASE/END depth, 2 = sqlite3_complete rule
    ) -> None:
        self.dialect = dialect
        self.normal = normal
        self.head = re.compile(head_source)
        self.head_chars = head_chars
        self.blank_source = blank_source
        self.mode = mode
        self._routine = None

    def routine(self) -> tuple[re.Pattern[str], re.Pattern[str]]:
        """(tokens inside a routine statement, whitespace and comments only)."""
        if self._routine is None:
            tokens = {
                "postgres": _PG_TOKENS + _PG_BLOCK_KEYWORDS,
                "mysql": _my_tokens(";") + _MY_BLOCK_KEYWORDS,
                "sqlite": _LITE_TOKENS + _LITE_KEYWORDS,
            }[self.dialect]
            self._routine = (re.compile("|".join(tokens)), re.compile(self.blank_source))
        return self._routine


@cache
def _spec(dialect: str) -> _Spec:
    """The regexes of one dialect, compiled on first use (a run uses one dialect)."""
    if dialect == "postgres":
        return _Spec(dialect, re.compile("|".join(_PG_TOKENS)), _PG_HEAD, "cC", _PG_BLANK, 1)
    if dialect == "mysql":
        # _my_regex(";"): the same object as for a file that sets DELIMITER ; again
        return _Spec(dialect, _my_regex(";"), _MY_HEAD, "cCbB", _MY_BLANK, 1)
    return _Spec(dialect, re.compile("|".join(_LITE_TOKENS)), _LITE_HEAD, "cCeE", _LITE_BLANK, 2)


@cache
def _quoted_body(quote: str, backslash: bool) -> Callable[[str, int], re.Match[str] | None]:
    """Matcher for the body of a quoted string (slow path, for many escapes).

    The repeat is bounded because the regex engine keeps state per iteration
    of a group; _scan_quoted() loops when the bound is reached.
    """
    q = re.escape(quote)
    if backslash:
        return re.compile(rf"[^{q}\\]*(?:(?:\\[\s\S]|{q}{q})[^{q}\\]*){{0,512}}").match
    return re.compile(rf"[^{q}]*(?:{q}{q}[^{q}]*){{0,512}}").match


_TXN: dict[str, str] = {
    "postgres": (
        rf"(?i:begin(?!\s+atomic(?!{_IDC}))|start\s+transaction|commit|end|abort"
        rf"|rollback(?!\s+(?:(?:work|transaction)\s+)?to(?!{_IDC}))"
        rf"|prepare\s+transaction)(?!{_IDC})"
    ),
    "mysql": (
        rf"(?:/\*M?!\d*\s*)?"
        rf"(?i:begin(?!\s+not\s+atomic(?!{_IDC}))|start\s+transaction|commit"
        rf"|rollback(?!\s+(?:work\s+)?to(?!{_IDC}))"
        rf"|set\s+(?:(?:session|local)\s+|@@(?:session\.|local\.)?)?autocommit)(?!{_IDC})"
    ),
    "sqlite": (rf"(?i:begin|commit|end|rollback(?!\s+(?:transaction\s+)?to(?!{_IDC})))(?!{_IDC})"),
}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


# Building a frozen dataclass through __init__ costs four object.__setattr__
# calls; the splitter makes one per statement, so it fills the slots directly.
# new(Statement) + the four setters is equivalent to Statement(text, line, start, end).
_STATEMENT_FIELDS = ("text", "line", "start", "end")
assert tuple(f.name for f in fields(Statement)) == _STATEMENT_FIELDS
_STATEMENT_BUILDERS: tuple[Any, Any, Any, Any, Any] = (
    object.__new__,
    *(Statement.__dict__[name].__set__ for name in _STATEMENT_FIELDS),
)


def _check_dialect(dialect: str) -> None:
    if dialect not in _DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r} (expected one of {sorted(_DIALECTS)})")


# Blocks open inside a routine statement.
_CASE_EXPR = 0  # CASE expression
_CASE = 1  # CASE statement
_BLOCK = 2  # BEGIN ... END

# Operators, and the keywords that an expression follows (see _MY_BLOCK_KEYWORDS).
_EXPRESSION_CHARS = frozenset("=<>+-*/%,|&^~!")
_EXPRESSION_WORDS = frozenset({
    "return", "select", "where", "by", "and", "or", "xor", "not", "set", "from", "join",
    "into", "update", "having", "distinct", "like", "between", "div", "mod", "interval",
    "limit", "when",
})  # fmt: skip


@cache
def _txn(dialect: str) -> re.Pattern[str]:
    return re.compile(_TXN[dialect])


@cache
def _last_word() -> re.Pattern[str]:
    return re.compile(r"[A-Za-z]+\Z")


def _significant_end(sql: str, start: int, end: int, comment_end: int, comment_sig: int) -> int:
    """Just after the last significant character before ``end``.

    ``start`` is the end of the previous token (no token lies between ``start``
    and ``end``); if that token was a comment (``start == comment_end``), the
    answer before it was ``comment_sig``.
    """
    tail = sql[start:end].rstrip()
    if tail:
        return start + len(tail)
    return comment_sig if start == comment_end else start


def _word_before(sql: str, end: int) -> str:
    """The (lower-cased) ASCII word that ends at ``end``, or ""."""
    if not sql[end - 1].isalpha():
        return ""
    m = _last_word().search(sql, max(0, end - 12), end)  # longer words are no keywords
    if m is None:
        return ""
    i = m.start()  # the word must be whole: not x.then, @do, my_loop
    if i > 0 and (_is_ident_char(sql[i - 1]) or sql[i - 1] in ".@"):
        return ""
    return m.group().lower()


def _expression_follows(sql: str, end: int) -> bool:
    """Whether an expression follows the significant text that ends at ``end``."""
    last = sql[end - 1]
    if last in _EXPRESSION_CHARS:
        return last != "/" or end < 2 or sql[end - 2] != "*"  # not the */ of /*! ... */
    return _word_before(sql, end) in _EXPRESSION_WORDS


def _my_statement_follows(sql: str, end: int, then_else: bool, conditions: int) -> bool:
    """Whether a mysql statement can start after the significant text ending at ``end``.

    That is after THEN or ELSE (if ``then_else``), DO, LOOP, REPEAT or a label's
    ':', or after the conditions of a handler declaration, if they start at
    ``conditions`` (-1: the statement is not a handler declaration).
    """
    last = sql[end - 1]
    if last == ":":
        return True
    word = _word_before(sql, end)
    if word == "do" or word == "loop" or word == "repeat":
        return True
    if then_else and (word == "then" or word == "else"):
        return True
    return (
        0 <= conditions < end
        and last not in _EXPRESSION_CHARS
        and _my_handler()[1].fullmatch(sql, conditions, end) is not None
    )


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$" or ch >= "\x80"


def _scan_quoted(sql: str, start: int, quote: str, backslash: bool) -> int:
    """End (just after the closing quote) of the quoted text opened at ``start``, or -1."""
    body = _quoted_body(quote, backslash)
    n = len(sql)
    p = start + 1
    while True:
        m = body(sql, p)
        e = p if m is None else m.end()
        if e >= n:
            return -1
        if sql[e] == quote:
            if e + 1 < n and sql[e + 1] == quote:  # doubled quote past the repeat bound
                p = e
                continue
            return e + 1
        # a backslash: either past the repeat bound, or the last character
        if e + 1 >= n:
            return -1
        p = e


def _pg_comment_end(sql: str, start: int) -> int:
    """End of the (nesting) PostgreSQL block comment opened at ``start``, or -1."""
    depth = 1
    p = start + 2
    search = re.compile(r"/\*|\*/").search  # (re caches it)
    while True:
        m = search(sql, p)
        if m is None:
            return -1
        p = m.end()
        if sql[m.start()] == "/":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return p


def _quote_name(quote: str, dialect: str) -> str:
    if quote == "'":
        return "string literal (')"
    if quote == '"':
        return 'double-quoted string (")' if dialect == "mysql" else 'quoted identifier (")'
    if quote == "`":
        return "quoted identifier (`)"
    return "bracketed identifier ([)"


def _delimiter_line(sql: str, keyword_end: int, line_offset: int) -> tuple[str, int]:
    """Parse a mysql ``DELIMITER`` line; return the new delimiter and the line's end."""
    m = _my_delimiter_lines()[2].match(sql, keyword_end)
    arg = m.group(1) if m is not None else ""
    if not arg:
        raise SplitError(
            "DELIMITER must be followed by the new delimiter (e.g. 'DELIMITER $$')",
            line_at(sql, keyword_end, line_offset=line_offset),
        )
    if "\\" in arg:
        raise SplitError(
            f"DELIMITER {arg!r} is not allowed: a delimiter cannot contain a backslash",
            line_at(sql, keyword_end, line_offset=line_offset),
        )
    end = sql.find("\n", m.end() if m is not None else keyword_end)
    return arg, len(sql) if end < 0 else end


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def split_statements(sql: str, dialect: Dialect, *, line_offset: int = 0) -> list[Statement]:
    """Split ``sql`` into statements according to ``dialect``.

    Empty statements (only whitespace and comments) are dropped.  Line numbers
    are 1-based, plus ``line_offset``.  Raises :class:`SplitError` for an
    unterminated quote, dollar quote or block comment, and for a malformed or
    misplaced mysql ``DELIMITER`` line.
    """
    _check_dialect(dialect)
    return list(iter_statements(sql, dialect, line_offset=line_offset))


def iter_statements(sql: str, dialect: Dialect, *, line_offset: int = 0) -> Iterator[Statement]:
    """:func:`split_statements` one statement at a time, so that a caller that keeps only
    what it needs of each (its offsets, say) never holds every statement's text at once.
    A :class:`SplitError` comes when the scan reaches it."""
    _check_dialect(dialect)
    spec = _spec(dialect)
    pg = dialect == "postgres"
    mysql = dialect == "mysql"
    n = len(sql)
    new, set_text, set_line, set_start, set_end = _STATEMENT_BUILDERS
    nonws = _NONWS.search
    head = spec.head.match
    head_chars = spec.head_chars  # first characters of a routine head ("" = none)
    blank: Callable[[str, int, int], re.Match[str] | None] | None = None  # in routines
    routine_search = None  # compiled when a routine statement first comes
    normal_search = spec.normal.search
    search = normal_search
    routine_mode = spec.mode

    delim = ";"
    d0 = ";"
    dlen = 1
    pos = 1 if sql.startswith("\ufeff") else 0
    stmt_start = -1  # offset of the current statement's first significant char
    line_pos = 0  # line_no is the line of offset line_pos
    line_no = 1 + line_offset

    mode = 0  # 0: ordinary statement; otherwise spec.mode inside a routine statement
    stack: list[int] = []  # open blocks inside a routine: _BLOCK, _CASE or _CASE_EXPR
    parens = 0  # parenthesis depth inside a routine statement
    last_semi = -1  # just after the last ';' inside the routine statement
    last_begin = -1  # just after the last BEGIN [[NOT] ATOMIC] that opened a block
    comment_end = -1  # just after the last comment inside the routine statement
    comment_sig = -1  # just after the last significant character before that comment
    handler_at = -1  # mysql: the statement start last checked for a handler declaration
    handler_conditions = -1  # where that declaration's conditions start (-1: none)
    end_ok = -1  # sqlite: just after an END that directly follows a ';'

    never = n + 1
    dl_nl = never  # offset of the '\n' before the next DELIMITER line (mysql)
    delimiter_line = _NONWS  # mysql only: elsewhere dl_nl stays past the end, never read
    if mysql:
        dl_nl = -1
        delimiter_line, first_delimiter_line, _ = _my_delimiter_lines()
        first = first_delimiter_line.match(sql, pos)
        if first is not None:
            delim, pos = _delimiter_line(sql, first.end(), line_offset)
            d0, dlen = delim[0], len(delim)
            if delim != ";":
                normal_search = search = _my_regex(delim).search
                head_chars = ""

    while True:
        if dl_nl < pos:
            dm = delimiter_line.search(sql, pos)
            dl_nl = never if dm is None else dm.start()
        m = search(sql, pos)
        if m is None:
            ts = te = n
        else:
            ts, te = m.span()

        if dl_nl < ts:  # a DELIMITER line, outside quotes and comments
            dm = delimiter_line.match(sql, dl_nl)
            assert dm is not None
            if stmt_start >= 0 or nonws(sql, pos, dl_nl) is not None:
                raise SplitError(
                    f"DELIMITER inside an unfinished statement; end the previous "
                    f"statement with {delim!r} first",
                    line_at(sql, dm.end(), line_offset=line_offset),
                )
            delim, pos = _delimiter_line(sql, dm.end(), line_offset)
            d0, dlen = delim[0], len(delim)
            if delim == ";":
                normal_search = search = spec.normal.search
                head_chars = spec.head_chars
            else:
                normal_search = search = _my_regex(delim).search
                head_chars = ""
            continue

        if m is None:
            break

        if stmt_start < 0:
            g = nonws(sql, pos, ts)
            if g is not None:
                stmt_start = g.start()
                if sql[stmt_start] in head_chars and head(sql, stmt_start) is not None:
                    # a compound (routine) statement starts here
                    pos = stmt_start
                    mode = routine_mode
                    if routine_search is None:
                        routine, blank_regex = spec.routine()
                        routine_search, blank = routine.search, blank_regex.fullmatch
                    search = routine_search
                    stack.clear()
                    parens = 0
                    last_semi = last_begin = end_ok = comment_end = handler_at = -1
                    continue

        c = sql[ts]

        # statement delimiter
        if c == d0 and (dlen == 1 or sql.startswith(delim, ts)):
            pos = te
            if stmt_start < 0:
                continue
            if mode:
                if mode == 1:
                    # psql, too, keeps a ';' inside parentheses (CREATE RULE ... (a; b))
                    if stack or parens:
                        last_semi = te
                        continue
                else:
                    assert blank is not None  # compiled with the routine regexes
                    if end_ok < 0 or blank(sql, end_ok, ts) is None:
                        last_semi = te
                        end_ok = -1
                        continue
                mode = 0
                search = normal_search
            text = sql[stmt_start:ts].rstrip()
            line_no += sql.count("\n", line_pos, stmt_start)
            line_pos = stmt_start
            st = new(Statement)
            set_text(st, text)
            set_line(st, line_no)
            set_start(st, stmt_start)
            set_end(st, stmt_start + len(text))
            yield st
            stmt_start = -1
            continue

        # quoted strings and identifiers
        if c == "'" or c == '"' or c == "`" or c == "[":
            if stmt_start < 0:
                stmt_start = ts
            if (
                pg
                and c == "'"
                and ts > 0
                and sql[ts - 1] in "eE"
                and (ts < 2 or not _is_ident_char(sql[ts - 2]))
            ):
                # E'...' escape string: backslash escapes too
                if te - ts == 1 or sql.find("\\", ts, te) >= 0:
                    te = _scan_quoted(sql, ts, "'", True)
            elif te - ts == 1:  # the fast pattern failed: escapes, or unterminated
                te = -1 if c == "[" else _scan_quoted(sql, ts, c, mysql and c != "`")
            if te < 0:
                raise SplitError(
                    f"unterminated {_quote_name(c, dialect)}",
                    line_at(sql, ts, line_offset=line_offset),
                )
            pos = te
            continue

        # line comments
        if c == "-" or c == "#":
            if mode == 1:
                comment_sig = _significant_end(sql, pos, ts, comment_end, comment_sig)
                comment_end = te
            pos = te
            continue

        # block comments; mysql executable comments /*! ... */ are content
        if c == "/":
            if te - ts > 2:
                pos = te
                if stmt_start < 0:
                    stmt_start = ts
                    if head_chars and head(sql, ts) is not None:  # /*!50003 CREATE*/ ...
                        pos = ts
                        mode = routine_mode
                        if routine_search is None:
                            routine, blank_regex = spec.routine()
                            routine_search, blank = routine.search, blank_regex.fullmatch
                        search = routine_search
                        stack.clear()
                        parens = 0
                        last_semi = last_begin = end_ok = comment_end = handler_at = -1
                continue
            if pg:
                e = _pg_comment_end(sql, ts)
            else:
                e = sql.find("*/", te)
                if e >= 0:
                    e += 2
            if e < 0:
                raise SplitError(
                    "unterminated /* comment", line_at(sql, ts, line_offset=line_offset)
                )
            if mode == 1:
                comment_sig = _significant_end(sql, pos, ts, comment_end, comment_sig)
                comment_end = e
            pos = e
            continue

        # PostgreSQL dollar quotes
        if c == "$":
            if stmt_start < 0:
                stmt_start = ts
            tag = sql[ts:te]
            e = sql.find(tag, te)
            if e < 0:
                raise SplitError(
                    f"unterminated dollar-quoted string {tag}",
                    line_at(sql, ts, line_offset=line_offset),
                )
            pos = e + len(tag)
            continue

        # keywords and parentheses, only inside routine statements
        prev_end = pos  # the end of the previous token
        pos = te
        if c == "(":
            parens += 1
        elif c == ")":
            if parens:
                parens -= 1
        elif parens:
            pass
        elif mode == 2:
            # sqlite3_complete(): remember an END that directly follows a ';'
            assert blank is not None  # compiled with the routine regexes
            directly = last_semi >= 0 and blank(sql, last_semi, ts) is not None
            end_ok = te if directly else -1
        elif c == "b" or c == "B" or c == "c" or c == "C":
            # where a statement can start, BEGIN opens a block and CASE is a
            # statement; elsewhere BEGIN is an identifier and CASE an expression
            # (see _MY_BLOCK_KEYWORDS)
            tail = sql[prev_end:ts].rstrip()  # (_significant_end, inlined)
            if tail:
                sig = prev_end + len(tail)
            else:
                sig = comment_sig if prev_end == comment_end else prev_end
            if stack:
                p = last_semi if last_semi > last_begin else last_begin
                if p >= 0 and sig <= p:
                    at_start = True
                elif mysql and sql[sig - 1] not in _EXPRESSION_CHARS:  # (a quick "no")
                    if handler_at != p and p >= 0:  # once per statement
                        handler_at = p
                        hm = _my_handler()[0].match(sql, p, sig)
                        handler_conditions = -1 if hm is None else hm.end()
                    conditions = handler_conditions if handler_at == p else -1
                    then_else = stack[-1] != _CASE_EXPR
                    at_start = _my_statement_follows(sql, sig, then_else, conditions)
                else:
                    at_start = False
            else:
                at_start = sig <= stmt_start or not _expression_follows(sql, sig)
            if c == "b" or c == "B":
                if at_start:
                    stack.append(_BLOCK)
                    last_begin = te
            else:
                stack.append(_CASE if at_start else _CASE_EXPR)
        elif te - ts == 3:  # a bare END
            if stack:
                if stack[-1] != _BLOCK:
                    stack.pop()  # closes a CASE
                else:
                    # closes a BEGIN block only where a statement may start
                    # (after ';' or BEGIN), so that a column named "end" is harmless
                    p = last_semi if last_semi > last_begin else last_begin
                    if (
                        p >= 0
                        and _significant_end(sql, prev_end, ts, comment_end, comment_sig) <= p
                    ):
                        stack.pop()
        elif stack and stack[-1] != _BLOCK and sql[te - 4 : te].lower() == "case":
            stack.pop()  # END CASE closes a CASE
        # END IF / LOOP / WHILE / REPEAT / FOR: no change

    if stmt_start < 0:
        g2 = nonws(sql, pos, n)
        if g2 is not None:
            stmt_start = g2.start()
    if stmt_start >= 0:
        text = sql[stmt_start:].rstrip()
        line_no += sql.count("\n", line_pos, stmt_start)
        yield Statement(text, line_no, stmt_start, stmt_start + len(text))


def _start_of(statement: Statement) -> int:
    return statement.start


def statement_index_at(statements: Sequence[Statement], offset: int) -> int | None:
    """Index of the statement containing character ``offset``.

    ``statements`` must be ordered by ``start`` (as returned by
    :func:`split_statements`).  A statement contains ``start <= offset <= end``
    (the offset just after its text, where its delimiter usually is, counts as
    inside it).  An offset between statements maps to the next statement; an
    offset after the last one maps to the last.  ``None`` if there are no
    statements.
    """
    if not statements:
        return None
    i = bisect_right(statements, offset, key=_start_of) - 1
    if i >= 0 and offset <= statements[i].end:
        return i
    if i + 1 < len(statements):
        return i + 1
    return len(statements) - 1


def line_at(sql: str, offset: int, *, line_offset: int = 0) -> int:
    """1-based line number (plus ``line_offset``) of character ``offset`` of ``sql``.

    Offsets past the end count as the last line.
    """
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    return sql.count("\n", 0, offset) + 1 + line_offset


def is_transaction_control(statement: Statement, dialect: Dialect) -> bool:
    """Whether ``statement`` is explicit transaction control in ``dialect``.

    PostgreSQL: BEGIN, START TRANSACTION, COMMIT [PREPARED], END, ROLLBACK
    [PREPARED] (not ROLLBACK TO [SAVEPOINT]), ABORT, PREPARE TRANSACTION.
    MySQL: BEGIN [WORK] (not BEGIN NOT ATOMIC), START TRANSACTION, COMMIT,
    ROLLBACK (not ROLLBACK TO), SET [SESSION|LOCAL] autocommit,
    SET @@[session.|local.]autocommit.
    SQLite: BEGIN, COMMIT, END, ROLLBACK (not ROLLBACK TO).
    """
    _check_dialect(dialect)
    return _txn(dialect).match(statement.text) is not None
