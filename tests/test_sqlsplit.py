"""Unit tests for whimbrel.sqlsplit (no database needed)."""

from __future__ import annotations

import pickle
import sqlite3
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whimbrel.sqlsplit import (
    Dialect,
    SplitError,
    Statement,
    is_transaction_control,
    line_at,
    split_statements,
    statement_index_at,
)

DIALECTS: tuple[Dialect, ...] = get_args(Dialect)


def split(sql: str, dialect: Dialect, *, line_offset: int = 0) -> list[Statement]:
    """split_statements, plus the invariants every result must satisfy."""
    statements = split_statements(sql, dialect, line_offset=line_offset)
    previous_end = -1
    for s in statements:
        assert sql[s.start : s.end] == s.text
        assert s.text, "empty statements are dropped"
        assert s.text == s.text.strip()
        assert s.start > previous_end
        assert s.line == line_at(sql, s.start, line_offset=line_offset)
        previous_end = s.end
    return statements


def texts(sql: str, dialect: Dialect) -> list[str]:
    return [s.text for s in split(sql, dialect)]


def split_error(sql: str, dialect: Dialect, *, line_offset: int = 0) -> SplitError:
    with pytest.raises(SplitError) as info:
        split_statements(sql, dialect, line_offset=line_offset)
    return info.value


# ---------------------------------------------------------------------------
# Basics, all dialects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
class TestBasics:
    def test_simple(self, dialect: Dialect) -> None:
        assert texts("SELECT 1; SELECT 2;", dialect) == ["SELECT 1", "SELECT 2"]

    def test_last_statement_without_delimiter(self, dialect: Dialect) -> None:
        assert texts("SELECT 1;\nSELECT 2\n\n", dialect) == ["SELECT 1", "SELECT 2"]

    def test_empty_statements_dropped(self, dialect: Dialect) -> None:
        assert texts(";;  ;\n; SELECT 1;;; ;", dialect) == ["SELECT 1"]

    @pytest.mark.parametrize("sql", ["", "   \n\t\n", "-- only a comment\n", "/* a */ ; -- b"])
    def test_nothing_to_run(self, dialect: Dialect, sql: str) -> None:
        assert split(sql, dialect) == []

    def test_leading_comments_dropped_inner_kept(self, dialect: Dialect) -> None:
        sql = "-- header\n/* block */\n  SELECT a, /* inner; */ b -- trailing; note\n  FROM t;"
        [s] = split(sql, dialect)
        assert s.text == "SELECT a, /* inner; */ b -- trailing; note\n  FROM t"
        assert s.line == 3
        assert s.start == sql.index("SELECT")

    def test_comment_before_delimiter_kept(self, dialect: Dialect) -> None:
        assert texts("SELECT 1 -- one\n;\nSELECT 2", dialect) == ["SELECT 1 -- one", "SELECT 2"]

    def test_delimiter_in_string_and_comment(self, dialect: Dialect) -> None:
        sql = "INSERT INTO t VALUES ('a;b', 'c'';d'); -- x; y\nSELECT 2 /* ; */;"
        assert texts(sql, dialect) == ["INSERT INTO t VALUES ('a;b', 'c'';d')", "SELECT 2 /* ; */"]

    def test_offsets_and_lines(self, dialect: Dialect) -> None:
        sql = "\n\nCREATE TABLE t (\n  id int\n);\n\n  INSERT INTO t VALUES (1);  \nSELECT 1"
        statements = split(sql, dialect)
        assert [(s.line, s.text) for s in statements] == [
            (3, "CREATE TABLE t (\n  id int\n)"),
            (7, "INSERT INTO t VALUES (1)"),
            (8, "SELECT 1"),
        ]
        assert statements[1].start == sql.index("INSERT")
        assert statements[1].end == sql.index(";  \nSELECT")

    def test_line_offset(self, dialect: Dialect) -> None:
        statements = split("SELECT 1;\n\nSELECT 2;", dialect, line_offset=10)
        assert [s.line for s in statements] == [11, 13]
        error = split_error("SELECT 1;\n'open", dialect, line_offset=10)
        assert error.line == 12

    def test_crlf(self, dialect: Dialect) -> None:
        statements = split("SELECT 1;\r\n-- c\r\nSELECT 2;\r\n", dialect)
        assert [(s.line, s.text) for s in statements] == [(1, "SELECT 1"), (3, "SELECT 2")]

    def test_byte_order_mark_is_skipped(self, dialect: Dialect) -> None:
        [s] = split("\ufeffSELECT 1;", dialect)
        assert (s.text, s.start, s.line) == ("SELECT 1", 1, 1)

    def test_unterminated_block_comment(self, dialect: Dialect) -> None:
        error = split_error("SELECT 1;\n\n/* never\nclosed;", dialect)
        assert error.line == 3
        assert "comment" in error.message

    def test_unterminated_single_quote(self, dialect: Dialect) -> None:
        error = split_error("SELECT 1;\nSELECT 'it''s;\n\n", dialect)
        assert error.line == 2
        assert "unterminated" in error.message and "string" in error.message

    def test_keywords_outside_routines_are_ordinary(self, dialect: Dialect) -> None:
        sql = "BEGIN;\nUPDATE t SET x = CASE WHEN y THEN 1 END;\nCOMMIT;\nEND;"
        assert texts(sql, dialect) == [
            "BEGIN",
            "UPDATE t SET x = CASE WHEN y THEN 1 END",
            "COMMIT",
            "END",
        ]

    def test_statement_is_frozen(self, dialect: Dialect) -> None:
        [s] = split("SELECT 1", dialect)
        assert s == Statement("SELECT 1", 1, 0, 8)
        with pytest.raises(AttributeError):
            s.text = "x"  # type: ignore[misc]


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_delimiter_word_is_not_special_where_not_mysql(dialect: Dialect) -> None:
    assert texts("DELIMITER //\nSELECT 1;", dialect) == ["DELIMITER //\nSELECT 1"]


def test_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="dialect"):
        split_statements("SELECT 1", "oracle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dialect"):
        is_transaction_control(Statement("COMMIT", 1, 0, 6), "oracle")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------


class TestPostgres:
    def test_escape_strings(self) -> None:
        sql = r"SELECT E'it\'s; fine', e'\\', 'plain\'; SELECT 2"
        assert texts(sql, "postgres") == [r"SELECT E'it\'s; fine', e'\\', 'plain\'", "SELECT 2"]

    def test_escape_string_with_doubled_quotes(self) -> None:
        sql = r"SELECT E'a''b\'c;d''' ; SELECT 2"
        assert texts(sql, "postgres") == [r"SELECT E'a''b\'c;d'''", "SELECT 2"]

    def test_e_at_end_of_identifier_is_not_an_escape_string(self) -> None:
        # typE'...' is the identifier "type" followed by a standard string
        sql = r"SELECT typE'x\';SELECT 1"
        assert texts(sql, "postgres") == [r"SELECT typE'x\'", "SELECT 1"]

    def test_unterminated_escape_string(self) -> None:
        error = split_error("SELECT 1;\nSELECT E'abc\\';", "postgres")
        assert error.line == 2

    def test_quoted_identifiers(self) -> None:
        sql = 'SELECT "a;""b" FROM "t;"; SELECT 2'
        assert texts(sql, "postgres") == ['SELECT "a;""b" FROM "t;"', "SELECT 2"]
        error = split_error('SELECT 1;\n\nSELECT "open;', "postgres")
        assert error.line == 3 and "identifier" in error.message

    def test_dollar_quotes(self) -> None:
        sql = "SELECT $$a;b$$, $x$ ; $$ ; $x$, $_y1$;$_y1$; SELECT 2"
        assert texts(sql, "postgres") == ["SELECT $$a;b$$, $x$ ; $$ ; $x$, $_y1$;$_y1$", "SELECT 2"]

    def test_dollar_quote_closing_tag_must_match(self) -> None:
        sql = "SELECT $a$ $b$ ; $A$ ; $a$; SELECT 2"
        assert texts(sql, "postgres") == ["SELECT $a$ $b$ ; $A$ ; $a$", "SELECT 2"]

    def test_parameters_are_not_dollar_quotes(self) -> None:
        sql = "PREPARE q AS SELECT $1, $2; EXECUTE q(1, 2)"
        assert texts(sql, "postgres") == ["PREPARE q AS SELECT $1, $2", "EXECUTE q(1, 2)"]

    def test_dollar_inside_identifier_is_not_a_quote(self) -> None:
        sql = "SELECT a$b$ FROM t; SELECT 2"
        assert texts(sql, "postgres") == ["SELECT a$b$ FROM t", "SELECT 2"]

    def test_unterminated_dollar_quote(self) -> None:
        error = split_error("SELECT 1;\nDO $body$\nBEGIN; END;", "postgres")
        assert error.line == 2
        assert "$body$" in error.message

    def test_nested_block_comments(self) -> None:
        sql = "/* outer /* inner; */ still comment; */ SELECT 1; /* a /* b /* c */ */ */ SELECT 2"
        assert texts(sql, "postgres") == ["SELECT 1", "SELECT 2"]
        error = split_error("SELECT 1;\n/* a /* b */\nSELECT 2;", "postgres")
        assert error.line == 2

    def test_line_comment_ends_at_carriage_return(self) -> None:
        assert texts("SELECT 1 -- c\r; SELECT 2", "postgres") == ["SELECT 1 -- c", "SELECT 2"]

    def test_plpgsql_function_with_dollar_body(self) -> None:
        sql = """\
-- migrate: audit trigger
CREATE OR REPLACE FUNCTION audit_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO audit(tbl, op, row) VALUES (TG_TABLE_NAME, TG_OP, row_to_json(OLD));
    RETURN OLD;
  END IF;
  INSERT INTO audit(tbl, op, row) VALUES (TG_TABLE_NAME, TG_OP, row_to_json(NEW));
  RETURN NEW;
END;
$$;

CREATE TRIGGER users_audit AFTER INSERT OR UPDATE OR DELETE ON users
FOR EACH ROW EXECUTE FUNCTION audit_row();
"""
        statements = split(sql, "postgres")
        assert len(statements) == 2
        assert statements[0].line == 2
        assert statements[0].text.startswith("CREATE OR REPLACE FUNCTION audit_row()")
        assert statements[0].text.endswith("END;\n$$")
        assert statements[1].line == 14
        assert statements[1].text.endswith("EXECUTE FUNCTION audit_row()")

    def test_function_body_tagged_fn_containing_dollar_dollar(self) -> None:
        sql = """\
CREATE FUNCTION make_fn() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE $$CREATE FUNCTION inner_fn() RETURNS int LANGUAGE sql AS 'SELECT 1;'$$;
  EXECUTE format($q$COMMENT ON TABLE t IS %L$q$, 'a;b');
END
$fn$;
SELECT make_fn();
"""
        statements = split(sql, "postgres")
        assert [s.line for s in statements] == [1, 7]
        assert statements[0].text.endswith("END\n$fn$")
        assert statements[1].text == "SELECT make_fn()"

    def test_begin_atomic_body(self) -> None:
        sql = """\
CREATE FUNCTION add(a integer, b integer) RETURNS integer
    LANGUAGE SQL
    IMMUTABLE
BEGIN ATOMIC
    SELECT CASE WHEN a IS NULL THEN 0 ELSE a END + b;
    SELECT 1;
END;
CREATE OR REPLACE PROCEDURE insert_data(a integer, b integer)
LANGUAGE SQL
begin atomic
  INSERT INTO tbl VALUES (a);
  INSERT INTO tbl VALUES (b);
end;
CALL insert_data(1, 2);
"""
        statements = split(sql, "postgres")
        assert [s.line for s in statements] == [1, 8, 14]
        assert statements[0].text.endswith("SELECT 1;\nEND")
        assert statements[1].text.endswith("INSERT INTO tbl VALUES (b);\nend")
        assert statements[2].text == "CALL insert_data(1, 2)"

    def test_empty_begin_atomic_and_return_case(self) -> None:
        sql = (
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC END; "
            "CREATE FUNCTION f(x int) RETURNS int RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END; "
            "SELECT 3"
        )
        assert texts(sql, "postgres") == [
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC END",
            "CREATE FUNCTION f(x int) RETURNS int RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END",
            "SELECT 3",
        ]

    def test_routine_head_with_comments(self) -> None:
        sql = (
            "CREATE /* c */ OR -- x\n REPLACE FUNCTION f() RETURNS int "
            "BEGIN ATOMIC SELECT 1; END; SELECT 2"
        )
        assert len(texts(sql, "postgres")) == 2

    def test_keywords_in_quotes_and_words_do_not_count(self) -> None:
        sql = (
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC "
            "SELECT 'END; BEGIN' AS \"end\", backend, beginning, end_date, x.end; "
            "-- END\n /* END; */ END; SELECT 2"
        )
        statements = texts(sql, "postgres")
        assert len(statements) == 2
        assert statements[1] == "SELECT 2"

    def test_identifier_named_begin_in_a_routine(self) -> None:
        sql = (
            "CREATE FUNCTION f(begin int) RETURNS int LANGUAGE sql "
            "BEGIN ATOMIC SELECT begin + (CASE WHEN begin > 0 THEN 1 END); END; SELECT 2"
        )
        assert texts(sql, "postgres")[1] == "SELECT 2"

    def test_unclosed_block_runs_to_the_end(self) -> None:
        sql = "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT 2;\n"
        assert texts(sql, "postgres") == [sql.strip()]

    def test_create_function_without_begin_atomic_splits_normally(self) -> None:
        sql = "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql; BEGIN; SELECT 1; END;"
        assert texts(sql, "postgres") == [
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "BEGIN",
            "SELECT 1",
            "END",
        ]

    def test_do_block(self) -> None:
        sql = "DO $$ BEGIN PERFORM 1; END $$;\nSELECT 1;"
        assert texts(sql, "postgres") == ["DO $$ BEGIN PERFORM 1; END $$", "SELECT 1"]

    def test_backtick_and_bracket_are_ordinary(self) -> None:
        assert texts("SELECT '`'; SELECT `x; SELECT [y;", "postgres") == [
            "SELECT '`'",
            "SELECT `x",
            "SELECT [y",
        ]

    def test_hash_is_not_a_comment(self) -> None:
        assert texts("SELECT 1 # 2; SELECT 3", "postgres") == ["SELECT 1 # 2", "SELECT 3"]

    @pytest.mark.parametrize(
        "body",
        [
            "SELECT begin FROM events ORDER BY begin",
            "SELECT begin atomic FROM events",  # column "begin", alias "atomic"
            "SELECT e.begin, (begin atomic) FROM events e",
        ],
    )
    def test_column_named_begin_in_a_begin_atomic_body(self, body: str) -> None:
        routine = f"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC {body}; SELECT 1; END"
        assert texts(f"{routine}; SELECT 2", "postgres") == [routine, "SELECT 2"]

    @pytest.mark.parametrize(
        "head",
        [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql /* body: */",
            "CREATE PROCEDURE p(begin int) LANGUAGE sql -- body:\n",
        ],
    )
    def test_begin_atomic_after_any_head(self, head: str) -> None:
        routine = f"{head} BEGIN ATOMIC SELECT 1; END"
        assert texts(f"{routine}; SELECT 2", "postgres") == [routine, "SELECT 2"]


# ---------------------------------------------------------------------------
# MySQL / MariaDB
# ---------------------------------------------------------------------------

MYSQL_PROCEDURE_BODY = """\
CREATE DEFINER=`admin`@`%` PROCEDURE add_user(IN p_name VARCHAR(100))
BEGIN
  DECLARE v_count INT DEFAULT 0;
  DECLARE EXIT HANDLER FOR SQLEXCEPTION
  BEGIN
    ROLLBACK;
    RESIGNAL;
  END;
  SELECT COUNT(*) INTO v_count FROM users WHERE name = p_name;
  IF v_count = 0 THEN
    INSERT INTO users(name) VALUES (p_name);
  ELSEIF v_count > 1 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dup; END';
  END IF;
  outer_loop: LOOP
    SET v_count = v_count + 1;
    IF v_count > 10 THEN LEAVE outer_loop; END IF;
  END LOOP outer_loop;
  WHILE v_count > 0 DO SET v_count = v_count - 1; END WHILE;
  REPEAT SET v_count = v_count + 1; UNTIL v_count > 3 END REPEAT;
  CASE v_count
    WHEN 4 THEN SELECT 'four';
    ELSE BEGIN END;
  END CASE;
  blk: BEGIN
    SELECT CASE WHEN v_count > 0 THEN 'pos' ELSE 'neg' END AS sign;
  END blk;
END"""


# Statements inside a procedure body.  Those with "BEGIN SELECT 1; END" must
# open a block there (else its END closes the body, and the routine splits);
# in the others, "begin" is an identifier (else the rest of the file is
# swallowed into the routine).
MYSQL_BEGIN_OPENS = {
    "after ;": "SELECT 0; BEGIN SELECT 1; END;",
    "after BEGIN": "BEGIN BEGIN SELECT 1; END; END;",
    "after BEGIN NOT ATOMIC": "BEGIN NOT ATOMIC BEGIN SELECT 1; END; END;",
    "after THEN": "IF a THEN BEGIN SELECT 1; END; END IF;",
    "after ELSEIF ... THEN": "IF a THEN SELECT 0; ELSEIF b THEN BEGIN SELECT 1; END; END IF;",
    "after ELSE": "IF a THEN SELECT 0; ELSE BEGIN SELECT 1; END; END IF;",
    "after DO": "WHILE a DO BEGIN SELECT 1; END; END WHILE;",
    "after LOOP": "l: LOOP BEGIN SELECT 1; END; LEAVE l; END LOOP l;",
    "after REPEAT": "REPEAT BEGIN SELECT 1; END; UNTIL a END REPEAT;",
    "after a label": "lbl: BEGIN SELECT 1; END lbl;",
    "after a label and space": "lbl : BEGIN SELECT 1; END lbl;",
    "after a quoted label": "`my lbl`: BEGIN SELECT 1; END `my lbl`;",
    "after CASE statement THEN": "CASE x WHEN 1 THEN BEGIN SELECT 1; END; END CASE;",
    "after CASE statement ELSE": "CASE WHEN x THEN SELECT 0; ELSE BEGIN SELECT 1; END; END CASE;",
    "in a CASE statement after ;": "CASE x WHEN 1 THEN SELECT 0; BEGIN SELECT 1; END; END CASE;",
    "after comments": "IF a THEN -- then; begin\n /* ; END */ BEGIN SELECT 1; END; END IF;",
    "after a comment after ;": "SELECT 0; # c\n BEGIN SELECT 1; END;",
    "lower case": "if a then begin select 1; end; end if;",
    "after a handler": "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN SELECT 1; END;",
    "after a handler, quoted": (
        "DECLARE CONTINUE HANDLER FOR SQLSTATE '23000', 1062, NOT FOUND, `cond`, x "
        "BEGIN SELECT 1; END;"
    ),
    "after a handler, comments": (
        '-- on error:\n DECLARE UNDO HANDLER FOR SQLSTATE VALUE "45000" /* c */ '
        "BEGIN SELECT 1; END;"
    ),
}
MYSQL_BEGIN_IS_A_NAME = {
    "after SELECT": "SELECT begin FROM t;",
    "after ORDER BY": "SELECT a FROM t ORDER BY begin;",
    "after a comma": "SELECT a, begin FROM t;",
    "after a dot": "SELECT t.begin FROM t;",
    "after @": "SET @begin = 1;",
    "after =": "SET x = begin;",
    "after :=": "SET @a := begin;",
    "after <": "DELETE FROM t WHERE a < begin;",
    "before an operator": "DELETE FROM t WHERE begin < NOW();",
    "after AS": "SELECT x AS begin FROM t;",
    "after IF": "IF begin THEN SELECT 0; END IF;",
    "after WHILE": "WHILE begin DO SELECT 0; END WHILE;",
    "after UNTIL": "REPEAT SELECT 0; UNTIL begin END REPEAT;",
    "after CASE": "CASE begin WHEN 1 THEN SELECT 0; END CASE;",
    "after CASE expression THEN/ELSE": "SELECT CASE WHEN a THEN begin ELSE begin END FROM t;",
    "in a CASE expression in IF": "IF CASE WHEN a THEN begin END THEN SELECT 0; END IF;",
    "after a handler's statement": "DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = begin;",
    "in parentheses": "INSERT INTO t (begin) SELECT MAX(begin) FROM u;",
    "after a comment": "SELECT a, -- then\n begin FROM t;",
    "quoted": "SELECT `begin`, 'BEGIN', \"begin\" FROM t;",
    "XA BEGIN": "XA BEGIN 'x';",
}
MYSQL_NESTINGS = {
    "in the body": "{}",
    "in a block": "lbl: BEGIN {} SELECT 0; END lbl;",
    "in IF": "IF x THEN {} END IF;",
    "in CASE in WHILE": "WHILE y DO CASE z WHEN 1 THEN {} END CASE; END WHILE;",
}

MYSQL_BEGIN_CASES = [
    pytest.param(statement, nesting, id=f"{name}, {where}")
    for name, statement in {**MYSQL_BEGIN_OPENS, **MYSQL_BEGIN_IS_A_NAME}.items()
    for where, nesting in MYSQL_NESTINGS.items()
    # handlers are declared at the start of a block only
    if "HANDLER" not in statement or nesting.startswith(("{}", "lbl"))
]


class TestMysql:
    def test_strings_with_backslash_and_doubled_quotes(self) -> None:
        sql = r"""SELECT 'it\'s;', 'it''s;', "a\";", "a"";", '\\'; SELECT 2"""
        assert texts(sql, "mysql") == [
            r"""SELECT 'it\'s;', 'it''s;', "a\";", "a"";", '\\'""",
            "SELECT 2",
        ]

    def test_backquoted_identifiers(self) -> None:
        assert texts("SELECT `a;``b` FROM `t`; SELECT 2", "mysql") == [
            "SELECT `a;``b` FROM `t`",
            "SELECT 2",
        ]
        error = split_error("SELECT 1;\nSELECT `open;", "mysql")
        assert error.line == 2 and "identifier" in error.message

    def test_unterminated_backslash_string(self) -> None:
        error = split_error("SELECT 1;\n\nSELECT 'abc\\';\n", "mysql")
        assert error.line == 3
        error = split_error('SELECT "abc', "mysql")
        assert error.line == 1 and "double-quoted" in error.message

    def test_double_dash_needs_whitespace(self) -> None:
        sql = "SELECT 1 --x; SELECT 2 -- y; z\n; SELECT 3--\n; SELECT 4 --\t;\n;"
        assert texts(sql, "mysql") == [
            "SELECT 1 --x",
            "SELECT 2 -- y; z",
            "SELECT 3--",
            "SELECT 4 --\t;",
        ]
        assert texts("SELECT 5 --", "mysql") == ["SELECT 5 --"]
        assert texts("-- only\n--", "mysql") == []

    def test_hash_comments(self) -> None:
        assert texts("# c; d\nSELECT 1 # e; f\n; SELECT 2", "mysql") == [
            "SELECT 1 # e; f",
            "SELECT 2",
        ]

    def test_block_comments_do_not_nest(self) -> None:
        assert texts("/* a /* b */ SELECT 1; SELECT 2 */", "mysql") == ["SELECT 1", "SELECT 2 */"]

    def test_executable_comments_are_statements(self) -> None:
        sql = "/*!40101 SET NAMES utf8 */;\n/*M!100100 SET x = 1 */;\n/* plain */;\n/*+ hint */;"
        statements = split(sql, "mysql")
        assert [(s.line, s.text) for s in statements] == [
            (1, "/*!40101 SET NAMES utf8 */"),
            (2, "/*M!100100 SET x = 1 */"),
        ]

    def test_mysqldump_output(self) -> None:
        sql = r"""-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
--
-- Host: localhost    Database: app
-- ------------------------------------------------------
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;

--
-- Table structure for table `users`
--

DROP TABLE IF EXISTS `users`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
CREATE TABLE `users` (
  `id` int NOT NULL AUTO_INCREMENT,
  `name` varchar(100) DEFAULT NULL COMMENT 'who; what',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
/*!40101 SET character_set_client = @saved_cs_client */;

LOCK TABLES `users` WRITE;
/*!40000 ALTER TABLE `users` DISABLE KEYS */;
INSERT INTO `users` VALUES (1,'O\'Brien; \"x\"'),(2,'line\nbreak\\');
/*!40000 ALTER TABLE `users` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER `users_bi`
BEFORE INSERT ON `users` FOR EACH ROW BEGIN
  SET NEW.name = TRIM(NEW.name);
END */;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
"""
        statements = split(sql, "mysql")
        assert len(statements) == 15
        assert (
            statements[0].text == "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */"
        )
        assert statements[0].line == 5
        assert statements[3].text == "DROP TABLE IF EXISTS `users`"
        assert statements[3].line == 13
        assert statements[9].text.startswith("INSERT INTO `users` VALUES (1,'O\\'Brien;")
        trigger = statements[13]
        assert trigger.text.startswith("/*!50003 CREATE*/")
        assert trigger.text.endswith("END */")
        assert trigger.line == 29
        assert statements[14].line == 34
        assert statements[14].text == "/*!50003 SET sql_mode              = @saved_sql_mode */"

    def test_mysqldump_trigger_without_delimiter(self) -> None:
        sql = (
            "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t "
            "BEFORE INSERT ON u FOR EACH ROW BEGIN SET NEW.a = 1; SET NEW.b = 2; END */;\n"
            "SELECT 1;"
        )
        statements = texts(sql, "mysql")
        assert len(statements) == 2 and statements[1] == "SELECT 1"

    def test_delimiter_dollar_and_slashes(self) -> None:
        sql = f"""\
DELIMITER $$
{MYSQL_PROCEDURE_BODY}$$
DELIMITER ;

delimiter //
CREATE TRIGGER users_bi BEFORE INSERT ON users
FOR EACH ROW
BEGIN
  SET NEW.created_at = NOW();
END //
DELIMITER ;
INSERT INTO users(name) VALUES ('a;b');
"""
        statements = split(sql, "mysql")
        assert [s.text for s in statements] == [
            MYSQL_PROCEDURE_BODY,
            "CREATE TRIGGER users_bi BEFORE INSERT ON users\nFOR EACH ROW\nBEGIN\n"
            "  SET NEW.created_at = NOW();\nEND",
            "INSERT INTO users(name) VALUES ('a;b')",
        ]
        assert MYSQL_PROCEDURE_BODY.count("\n") == 27
        assert [s.line for s in statements] == [2, 33, 39]

    def test_custom_delimiter_makes_semicolon_ordinary(self) -> None:
        sql = "DELIMITER ;;\nSELECT 1; SELECT 2;;\nSELECT 3 ;;\nDELIMITER ;\nSELECT 4;"
        assert texts(sql, "mysql") == ["SELECT 1; SELECT 2", "SELECT 3", "SELECT 4"]

    def test_custom_delimiter_inside_quotes_and_comments(self) -> None:
        sql = "DELIMITER $$\nSELECT '$$', `$$` -- $$\n, \"$$\" /* $$ */$$\nSELECT 2"
        assert texts(sql, "mysql") == ["SELECT '$$', `$$` -- $$\n, \"$$\" /* $$ */", "SELECT 2"]

    def test_delimiter_line_variants(self) -> None:
        # leading whitespace, any case, trailing text ignored, last line without newline
        sql = "  Delimiter\t//  ignored\nSELECT 1 //\n\tDELIMITER ;\nSELECT 2;\nDELIMITER $$"
        assert texts(sql, "mysql") == ["SELECT 1", "SELECT 2"]

    def test_delimiter_after_comment_only_buffer(self) -> None:
        sql = "SELECT 1;\n-- about the procedure\n/* more */\nDELIMITER $$\nSELECT 2$$"
        assert texts(sql, "mysql") == ["SELECT 1", "SELECT 2"]

    def test_delimiter_not_recognized_inside_quotes_comments_or_mid_line(self) -> None:
        sql = "SELECT '\nDELIMITER $$\n' /*\nDELIMITER $$\n*/;\nSELECT 2; DELIMITER $$\n;"
        assert texts(sql, "mysql") == [
            "SELECT '\nDELIMITER $$\n' /*\nDELIMITER $$\n*/",
            "SELECT 2",
            "DELIMITER $$",
        ]

    def test_delimiter_after_comment_lines_and_empty_statements(self) -> None:
        sql = (
            "SELECT 1;\n-- a\n  # b\nDELIMITER $$\nSELECT 2$$\n-- c\nDELIMITER ;\n"
            ";; ;\nDELIMITER //\nSELECT 3//"
        )
        assert texts(sql, "mysql") == ["SELECT 1", "SELECT 2", "SELECT 3"]
        # with a custom delimiter, ';' is content: the statement is unfinished
        error = split_error("DELIMITER $$\nSELECT 2$$ ;\nDELIMITER ;\n", "mysql")
        assert error.line == 3

    def test_delimiter_word_prefix_is_not_the_command(self) -> None:
        assert texts("DELIMITERS x;\nSELECT 1;", "mysql") == ["DELIMITERS x", "SELECT 1"]

    def test_delimiter_without_argument(self) -> None:
        for sql in ("SELECT 1;\nDELIMITER\nSELECT 2;", "SELECT 1;\nDELIMITER   \n", "DELIMITER"):
            error = split_error(sql, "mysql")
            assert error.line == (1 if sql == "DELIMITER" else 2)
            assert "DELIMITER" in error.message

    def test_delimiter_inside_unfinished_statement(self) -> None:
        error = split_error("SELECT 1;\nCREATE TABLE t (\n  id int\nDELIMITER $$\n", "mysql")
        assert error.line == 4
        assert "end the previous statement" in error.message
        assert str(error) == f"line 4: {error.message}"

    def test_delimiter_with_backslash(self) -> None:
        error = split_error("SELECT 1;\n\nDELIMITER \\\\\n", "mysql")
        assert error.line == 3
        assert "backslash" in error.message

    def test_procedure_without_delimiter(self) -> None:
        sql = f"-- no DELIMITER: the server parses it\n{MYSQL_PROCEDURE_BODY};\nCALL add_user('x');"
        statements = split(sql, "mysql")
        assert [s.text for s in statements] == [MYSQL_PROCEDURE_BODY, "CALL add_user('x')"]
        assert [s.line for s in statements] == [2, 30]

    def test_trigger_and_event_without_delimiter(self) -> None:
        sql = """\
CREATE TRIGGER users_bu BEFORE UPDATE ON users FOR EACH ROW
BEGIN
  IF NEW.name <> OLD.name THEN
    SET NEW.updated_at = NOW();
  END IF;
END;
CREATE DEFINER = CURRENT_USER EVENT purge ON SCHEDULE EVERY 1 DAY DO
BEGIN
  DELETE FROM sessions WHERE expires < NOW();
END;
CREATE TRIGGER simple BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1;
SELECT 1;
"""
        statements = split(sql, "mysql")
        assert [s.line for s in statements] == [1, 7, 11, 12]
        assert statements[0].text.endswith("END IF;\nEND")
        assert (
            statements[2].text
            == "CREATE TRIGGER simple BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1"
        )

    @pytest.mark.parametrize(
        "head",
        [
            "CREATE PROCEDURE",
            "create or replace procedure",
            "CREATE DEFINER=root@localhost PROCEDURE",
            "CREATE DEFINER='root'@'%' PROCEDURE",
            'CREATE DEFINER="a\\"b"@"%" FUNCTION',
            "CREATE DEFINER = CURRENT_USER() PROCEDURE",
            "CREATE DEFINER=`x`@`y` SQL SECURITY INVOKER PROCEDURE",
            "CREATE AGGREGATE FUNCTION",
            "CREATE /* c */ PROCEDURE",
        ],
    )
    def test_routine_heads(self, head: str) -> None:
        sql = f"{head} p() BEGIN SELECT 1; SELECT 2; END; SELECT 3"
        assert texts(sql, "mysql") == [f"{head} p() BEGIN SELECT 1; SELECT 2; END", "SELECT 3"]

    def test_function_without_begin(self) -> None:
        sql = (
            "CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC "
            "RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END; SELECT f(1);"
        )
        assert texts(sql, "mysql") == [
            "CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC "
            "RETURN CASE WHEN x > 0 THEN 1 ELSE 0 END",
            "SELECT f(1)",
        ]

    def test_column_named_end_or_begin_like_words(self) -> None:
        sql = (
            "CREATE PROCEDURE p() BEGIN SELECT `end`, end, t.end, @end, beginning, backend "
            "FROM t; UPDATE t SET end = 1; END; SELECT 2"
        )
        assert texts(sql, "mysql")[1] == "SELECT 2"

    def test_parameters_named_begin_and_end(self) -> None:
        sql = (
            "CREATE PROCEDURE p(IN begin INT, OUT end INT) BEGIN "
            "SELECT (CASE WHEN begin THEN 1 END) INTO end; END; SELECT 2"
        )
        assert texts(sql, "mysql")[1] == "SELECT 2"

    def test_mariadb_begin_not_atomic(self) -> None:
        sql = """\
BEGIN NOT ATOMIC
  DECLARE x INT DEFAULT 0;
  WHILE x < 10 DO
    INSERT INTO t VALUES (x);
    SET x = x + 1;
  END WHILE;
END;
BEGIN;
SELECT 1;
COMMIT;
"""
        statements = split(sql, "mysql")
        assert [s.line for s in statements] == [1, 8, 9, 10]
        assert statements[0].text.endswith("END WHILE;\nEND")
        assert [s.text for s in statements[1:]] == ["BEGIN", "SELECT 1", "COMMIT"]

    def test_routines_are_not_tracked_with_a_custom_delimiter(self) -> None:
        # as in the mysql client, the custom delimiter always ends the statement
        sql = "DELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT 1; //\nSELECT 2//"
        assert texts(sql, "mysql") == ["CREATE PROCEDURE p() BEGIN SELECT 1;", "SELECT 2"]

    def test_brackets_are_ordinary(self) -> None:
        assert texts("SELECT [a; SELECT b]", "mysql") == ["SELECT [a", "SELECT b]"]

    def test_column_named_begin_in_a_routine_without_delimiter(self) -> None:
        sql = """\
CREATE TABLE events (id INT, begin DATETIME);
CREATE TABLE audit (n INT);
CREATE OR REPLACE PROCEDURE first_event() BEGIN
  SELECT begin FROM events ORDER BY begin LIMIT 1;
END;
INSERT INTO audit VALUES (1);
INSERT INTO audit_typo VALUES (2);
"""
        statements = split(sql, "mysql")
        assert [s.text for s in statements] == [
            "CREATE TABLE events (id INT, begin DATETIME)",
            "CREATE TABLE audit (n INT)",
            "CREATE OR REPLACE PROCEDURE first_event() BEGIN\n"
            "  SELECT begin FROM events ORDER BY begin LIMIT 1;\nEND",
            "INSERT INTO audit VALUES (1)",
            "INSERT INTO audit_typo VALUES (2)",
        ]
        assert [s.line for s in statements] == [1, 2, 3, 6, 7]

    @pytest.mark.parametrize(("statement", "nesting"), MYSQL_BEGIN_CASES)
    def test_begin_opens_a_block_only_where_a_statement_can_start(
        self, statement: str, nesting: str
    ) -> None:
        routine = f"CREATE PROCEDURE p() BEGIN {nesting.format(statement)} END"
        sql = f"{routine};\nINSERT INTO t VALUES (1);\nSELECT 2"
        assert texts(sql, "mysql") == [routine, "INSERT INTO t VALUES (1)", "SELECT 2"]

    @pytest.mark.parametrize(
        "routine",
        [
            # BEGIN opens the body
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO BEGIN DELETE FROM t; SELECT 1; END",
            "CREATE TRIGGER t BEFORE INSERT ON u FOR EACH ROW FOLLOWS o BEGIN SET x = 1; END",
            "CREATE PROCEDURE p() COMMENT 'p; begin' BEGIN SELECT 1; END",
            "CREATE PROCEDURE p() SQL SECURITY INVOKER -- body:\n BEGIN SELECT 1; END",
            "CREATE FUNCTION f() RETURNS DECIMAL(10, 2) DETERMINISTIC BEGIN RETURN 1; END",
            "CREATE PROCEDURE p() lbl: BEGIN SELECT 1; END lbl",
            "CREATE PROCEDURE p(x INT) CASE x WHEN 1 THEN BEGIN SELECT 1; END; END CASE",
            "BEGIN NOT ATOMIC SELECT begin FROM t; BEGIN SELECT 1; END; END",
            # "begin" is a name
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM t WHERE begin < NOW()",
            "CREATE FUNCTION f(begin INT) RETURNS INT RETURN begin + 1",
            "CREATE FUNCTION f(begin INT) RETURNS INT RETURN CASE WHEN begin THEN begin END",
            "CREATE TRIGGER t BEFORE INSERT ON u FOR EACH ROW SET NEW.x = begin",
            "CREATE TRIGGER t AFTER INSERT ON u FOR EACH ROW INSERT INTO v SELECT begin FROM w",
        ],
    )
    def test_begin_at_the_routine_body_level(self, routine: str) -> None:
        assert texts(f"{routine};\nSELECT 2;", "mysql") == [routine, "SELECT 2"]

    def test_column_named_begin_with_delimiter(self) -> None:
        sql = (
            "DELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT begin FROM t; "
            "IF a THEN BEGIN END; END IF; END//\nDELIMITER ;\nSELECT 2;"
        )
        assert texts(sql, "mysql") == [
            "CREATE PROCEDURE p() BEGIN SELECT begin FROM t; IF a THEN BEGIN END; END IF; END",
            "SELECT 2",
        ]


# ---------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------


class TestSqlite:
    def test_quotes(self) -> None:
        sql = "SELECT 'a;''b', \"c;\"\"d\", `e;``f`, [g;h] FROM t; SELECT 2"
        assert texts(sql, "sqlite") == [
            "SELECT 'a;''b', \"c;\"\"d\", `e;``f`, [g;h] FROM t",
            "SELECT 2",
        ]

    def test_backslash_is_ordinary(self) -> None:
        assert texts("SELECT 'a\\'; SELECT 2", "sqlite") == ["SELECT 'a\\'", "SELECT 2"]

    @pytest.mark.parametrize(
        ("sql", "what"),
        [
            ("SELECT [open;", "bracketed identifier"),
            ("SELECT `open;", "identifier"),
            ('SELECT "open;', "identifier"),
        ],
    )
    def test_unterminated(self, sql: str, what: str) -> None:
        error = split_error(f"SELECT 1;\n{sql}", "sqlite")
        assert error.line == 2 and what in error.message

    def test_block_comments_do_not_nest(self) -> None:
        assert texts("/* a /* b */ SELECT 1; SELECT 2", "sqlite") == ["SELECT 1", "SELECT 2"]

    def test_trigger_with_case(self) -> None:
        sql = """\
CREATE TABLE t (id INTEGER PRIMARY KEY, status TEXT, "end" TEXT);
CREATE TRIGGER t_status AFTER UPDATE ON t
BEGIN
  UPDATE t SET status = CASE WHEN NEW.status IS NULL THEN 'new' ELSE NEW.status END
  WHERE id = NEW.id;
  INSERT INTO log VALUES ('changed; END;', NEW.id);
END;
INSERT INTO t (status) VALUES ('x');
"""
        statements = split(sql, "sqlite")
        assert [s.line for s in statements] == [1, 2, 8]
        assert statements[1].text.endswith("NEW.id);\nEND")
        assert all(sqlite3.complete_statement(s.text + ";") for s in statements)

    def test_temp_trigger_with_when_clause_and_end_column(self) -> None:
        sql = (
            "create temp trigger tr before insert on t when new.a > 0 begin "
            "update t set end = new.end, begin = 1 where x = 1; select 1; end; select 2"
        )
        statements = texts(sql, "sqlite")
        assert len(statements) == 2
        assert statements[0].endswith("select 1; end")
        assert statements[1] == "select 2"

    def test_trigger_with_begin_columns(self) -> None:
        sql = (
            "CREATE TRIGGER tr AFTER INSERT ON events BEGIN "
            "SELECT begin FROM events ORDER BY begin; UPDATE t SET begin = new.begin; END;\n"
            "SELECT 2;"
        )
        statements = texts(sql, "sqlite")
        assert statements == [sql[: sql.index(";\n")], "SELECT 2"]
        assert all(sqlite3.complete_statement(s + ";") for s in statements)

    def test_explain_query_plan_trigger(self) -> None:
        sql = "EXPLAIN QUERY PLAN CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END; SELECT 2"
        assert len(texts(sql, "sqlite")) == 2

    def test_transaction_statements(self) -> None:
        sql = "BEGIN TRANSACTION;\nCREATE TABLE t (x);\nEND TRANSACTION;"
        assert texts(sql, "sqlite") == [
            "BEGIN TRANSACTION",
            "CREATE TABLE t (x)",
            "END TRANSACTION",
        ]

    def test_hash_is_not_a_comment(self) -> None:
        assert texts("SELECT 1 # x; SELECT 2", "sqlite") == ["SELECT 1 # x", "SELECT 2"]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_split_error_attributes_and_pickling() -> None:
    error = SplitError("unterminated thing", 7)
    assert isinstance(error, ValueError)
    assert (error.message, error.line, str(error)) == (
        "unterminated thing",
        7,
        "line 7: unterminated thing",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.message, copy.line, str(copy)) == (
        SplitError,
        "unterminated thing",
        7,
        "line 7: unterminated thing",
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_error_line_is_where_the_quote_opened(dialect: Dialect) -> None:
    sql = "SELECT 1;\nSELECT 2;\nSELECT 'this\nstring\nnever\nends"
    error = split_error(sql, dialect)
    assert error.line == 3
    assert str(error).startswith("line 3: ")


# ---------------------------------------------------------------------------
# statement_index_at, line_at
# ---------------------------------------------------------------------------


def test_statement_index_at() -> None:
    sql = "  SELECT 1;  \n SELECT 22;   SELECT 333  "
    statements = split(sql, "postgres")
    assert statement_index_at([], 5) is None
    assert statement_index_at(statements, 0) == 0  # before the first
    for i, s in enumerate(statements):
        assert statement_index_at(statements, s.start) == i
        assert statement_index_at(statements, s.end - 1) == i
        assert statement_index_at(statements, s.end) == i  # where the delimiter is
    assert statement_index_at(statements, sql.index("22;") + 3) == 2  # between: the next one
    assert statement_index_at(statements, len(sql)) == 2  # after the last
    assert statement_index_at(statements, 10_000) == 2
    assert statement_index_at(statements, -5) == 0


def test_line_at() -> None:
    sql = "a\nbb\n\nccc"
    assert [line_at(sql, i) for i in range(len(sql) + 1)] == [1, 1, 2, 2, 2, 3, 4, 4, 4, 4]
    assert line_at(sql, 3, line_offset=100) == 102
    assert line_at(sql, 1000) == 4
    assert line_at("", 0) == 1
    with pytest.raises(ValueError):
        line_at(sql, -1)


# ---------------------------------------------------------------------------
# is_transaction_control
# ---------------------------------------------------------------------------

TRANSACTION_CONTROL: dict[Dialect, tuple[list[str], list[str]]] = {
    "postgres": (
        [
            "BEGIN",
            "begin work",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "commit and chain",
            "END",
            "end transaction",
            "ROLLBACK",
            "ROLLBACK PREPARED 'x'",
            "ABORT",
            "PREPARE TRANSACTION 'foo'",
            "COMMIT PREPARED 'foo'",
        ],
        [
            "ROLLBACK TO SAVEPOINT a",
            "rollback to a",
            "ROLLBACK WORK TO a",
            "ROLLBACK TRANSACTION TO SAVEPOINT a",
            "SAVEPOINT a",
            "BEGINNING",
            "COMMITTED",
            "SELECT 1",
            "CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END",
            "START",
            "PREPARE q AS SELECT 1",
            "ENDING",
        ],
    ),
    "mysql": (
        [
            "BEGIN",
            "begin work",
            "START TRANSACTION",
            "start transaction with consistent snapshot",
            "COMMIT",
            "ROLLBACK",
            "ROLLBACK WORK",
            "SET autocommit = 0",
            "set AUTOCOMMIT=1",
            "SET @@autocommit = 0",
            "SET @@session.autocommit = 0",
            "SET SESSION autocommit = 0",
            "/*!40101 SET autocommit=0 */",
        ],
        [
            "BEGIN NOT ATOMIC SELECT 1; END",
            "begin not atomic select 1; end",
            "ROLLBACK TO SAVEPOINT a",
            "ROLLBACK WORK TO a",
            "SET autocommit_x = 1",
            "SET GLOBAL autocommit = 0",
            "SET NAMES utf8",
            "END",
            "SELECT 1",
        ],
    ),
    "sqlite": (
        [
            "BEGIN",
            "BEGIN IMMEDIATE TRANSACTION",
            "COMMIT",
            "END TRANSACTION",
            "ROLLBACK",
            "rollback transaction",
        ],
        [
            "ROLLBACK TO a",
            "ROLLBACK TRANSACTION TO SAVEPOINT a",
            "SAVEPOINT a",
            "RELEASE a",
            "SELECT 1",
            "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END",
        ],
    ),
}


@pytest.mark.parametrize(
    ("dialect", "text", "expected"),
    [
        (dialect, text, expected)
        for dialect, (yes, no) in TRANSACTION_CONTROL.items()
        for expected, group in ((True, yes), (False, no))
        for text in group
    ],
)
def test_is_transaction_control(dialect: Dialect, text: str, expected: bool) -> None:
    [statement] = split(f"-- leading comment\n{text};", dialect)
    assert is_transaction_control(statement, dialect) is expected


def test_transaction_control_detected_in_a_file() -> None:
    sql = "/* x */ BEGIN;\nCREATE TABLE t (id int);\n-- done\nCOMMIT;\n"
    flags = [is_transaction_control(s, "postgres") for s in split(sql, "postgres")]
    assert flags == [True, False, True]


# ---------------------------------------------------------------------------
# Large inputs (cheap sanity checks against quadratic behaviour)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_large_literal_and_many_statements(dialect: Dialect) -> None:
    big = "x''y" * 250_000  # 1 MB with 250k escaped quotes
    statements = split(f"SELECT '{big}';\nSELECT 2", dialect)
    assert len(statements) == 2 and len(statements[0].text) == len(big) + 9
    many = "".join(f"INSERT INTO t VALUES ({i}, 'v;{i}');\n" for i in range(20_000))
    statements = split_statements(many, dialect)
    assert len(statements) == 20_000
    assert statements[-1].line == 20_000
    assert statements[-1].text == "INSERT INTO t VALUES (19999, 'v;19999')"


def test_many_backslash_escapes() -> None:
    body = "\\'" * 200_000
    assert texts(f"SELECT '{body}'; SELECT 2", "mysql")[1] == "SELECT 2"
    assert texts(f"SELECT E'{body}'; SELECT 2", "postgres")[1] == "SELECT 2"


# ---------------------------------------------------------------------------
# Property-based tests
# ---------------------------------------------------------------------------

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# for the tests whose inputs are expensive to generate
STRUCTURED = settings(FAST, max_examples=50)

SQL_FRAGMENTS = [
    ";", ";", ";", "'", '"', "`", "[", "]", "$", "$$", "$a$", "$1", "E'", "\\", "--", "-- ",
    "#", "/*", "*/", "/*!", "/*!50003 ", "*", "/", "-", "\n", "\r\n", " ", "\t",
    "BEGIN", "begin", "END", "end", "CASE", "END IF", "END CASE", "ATOMIC", "NOT ATOMIC",
    "CREATE", "create", "OR REPLACE", "FUNCTION", "PROCEDURE", "TRIGGER", "EVENT",
    "TEMP", "DEFINER=`a`@`b`", "DELIMITER", "delimiter ", "\nDELIMITER $$\n",
    "\nDELIMITER ;\n", "\nDELIMITER //\n", "//", "x", "1", "lbl:", "(", ")", "é", "\ufeff",
]  # fmt: skip

sql_soup = st.lists(
    st.one_of(st.sampled_from(SQL_FRAGMENTS), st.text(max_size=3)), max_size=40
).map("".join)


@pytest.mark.parametrize("dialect", DIALECTS)
@FAST
@given(sql=sql_soup)
def test_arbitrary_text_only_raises_split_error(dialect: Dialect, sql: str) -> None:
    try:
        statements = split(sql, dialect)
    except SplitError as error:
        assert error.line >= 1
        assert str(error) == f"line {error.line}: {error.message}"
        return
    for s in statements:
        is_transaction_control(s, dialect)
        assert statement_index_at(statements, s.start) == statements.index(s)


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
@FAST
@given(sql=sql_soup)
def test_statements_split_again_as_themselves(dialect: Dialect, sql: str) -> None:
    try:
        statements = split_statements(sql.replace("\ufeff", ""), dialect)
    except SplitError:
        return
    for s in statements:
        assert texts(s.text, dialect) == [s.text]


def _string(quote: str, escapes: list[str]) -> st.SearchStrategy[str]:
    chars = st.text(alphabet="ab ;-/*#\n$", max_size=6)
    parts = st.lists(st.one_of(chars, st.sampled_from(escapes)), max_size=5)
    return parts.map(lambda items: quote + "".join(items) + quote)


ATOMS: dict[Dialect, st.SearchStrategy[str]] = {
    "postgres": st.one_of(
        _string("'", ["''"]),
        _string('"', ['""']),
        _string("'", ["''", "\\'", "\\\\"]).map(lambda s: "E" + s),
        st.sampled_from(["$$a;b$$", "$t$ $$ ; $t$", "$1", "/* a; /* b; */ */", "-- c;\n"]),
    ),
    "mysql": st.one_of(
        _string("'", ["''", "\\'", "\\\\", '\\"']),
        _string('"', ['""', '\\"', "\\\\"]),
        _string("`", ["``"]),
        st.sampled_from(["/* a; */", "-- c;\n", "# c;\n", "--x", "/*!40101 x */"]),
    ),
    "sqlite": st.one_of(
        _string("'", ["''"]),
        _string('"', ['""']),
        _string("`", ["``"]),
        st.sampled_from(["[a;b]", "/* a; */", "-- c;\n", "\\"]),
    ),
}

WORDS = st.sampled_from(
    ["SELECT", "INSERT", "UPDATE", "x", "t1", "42", "(", ")", ",", "=", "-", "/", "*", "."]
)


def simple_statement(dialect: Dialect) -> st.SearchStrategy[str]:
    """A statement without a routine body; it does not end with a line comment."""
    first = st.sampled_from(["SELECT", "INSERT", "UPDATE", "DROP", "ALTER", "x"])
    middle = st.lists(st.one_of(WORDS, ATOMS[dialect]), max_size=8)
    last = st.sampled_from(["x", "1", ")"])
    return st.tuples(first, middle, last).map(lambda p: " ".join([p[0], *p[1], p[2]]).strip())


@pytest.mark.parametrize("dialect", DIALECTS)
@STRUCTURED
@given(data=st.data())
def test_joined_statements_round_trip(dialect: Dialect, data: st.DataObject) -> None:
    statements = data.draw(st.lists(simple_statement(dialect), max_size=8))
    trailing = data.draw(st.sampled_from(["", ";", ";\n", ";\n-- end\n", "; /* ; */"]))
    sql = ";\n".join(statements) + trailing
    result = split(sql, dialect)
    assert [s.text for s in result] == statements
    line = 1
    for s, text in zip(result, statements, strict=True):
        assert s.line == line
        line += text.count("\n") + 1


# MySQL routine bodies built from compound statements, whose simple statements
# use "begin" and "end" as names; separators may hold comments.
ROUTINE_SEPARATORS = st.sampled_from([" ", "\n  ", " -- then; begin\n ", " /* ; END */ ", "\t"])
ROUTINE_SIMPLE = st.sampled_from(
    [
        "SELECT begin FROM t ORDER BY begin",
        "SET x = begin",
        "UPDATE t SET begin = end WHERE t.begin > 0 AND `end` < @begin",
        "SELECT CASE WHEN begin THEN begin ELSE 0 END, MAX(end) FROM t",
        "DELETE FROM t WHERE begin < NOW()",
        "SELECT 'BEGIN', \"end;\" FROM t",
        "SET @a := begin",
        "LEAVE lbl",
    ]
)


def _routine_statements(item: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Zero to three statements, each with a separator before it and a ';' after."""
    pair = st.tuples(ROUTINE_SEPARATORS, item).map("".join)
    return st.lists(pair, max_size=3).map(lambda xs: "".join(f"{x};" for x in xs))


def _compound(item: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    body = _routine_statements(item)
    templates = [
        "BEGIN{} END",
        "lbl: BEGIN{} END lbl",
        "IF begin > 0 THEN{} ELSEIF b THEN{} ELSE{} END IF",
        "WHILE begin DO{} END WHILE",
        "lbl: LOOP{} END LOOP lbl",
        "REPEAT{} UNTIL begin END REPEAT",
        "CASE begin WHEN 1 THEN{} ELSE{} END CASE",
    ]
    handler = st.tuples(ROUTINE_SEPARATORS, item, body).map(
        lambda t: (
            f"BEGIN DECLARE EXIT HANDLER FOR SQLSTATE '23000', NOT FOUND{t[0]}{t[1]};{t[2]} END"
        )
    )
    return st.one_of(
        handler,
        *[
            st.tuples(*[body] * template.count("{}")).map(lambda xs, t=template: t.format(*xs))
            for template in templates
        ],
    )


routine_body = _routine_statements(st.recursive(ROUTINE_SIMPLE, _compound, max_leaves=8))


@STRUCTURED
@given(
    body=routine_body,
    head=st.sampled_from(
        [
            "CREATE PROCEDURE p() BEGIN",
            "BEGIN NOT ATOMIC",
            "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO lbl: BEGIN",
        ]
    ),
    lower=st.booleans(),
)
def test_mysql_routine_with_begin_and_end_names(body: str, head: str, lower: bool) -> None:
    routine = f"{head}{body} END"
    if lower:
        routine = routine.lower()
    sql = f"SELECT 1;\n{routine};\nINSERT INTO t (begin, end) VALUES (1, 2);\nSELECT 2"
    assert texts(sql, "mysql") == [
        "SELECT 1",
        routine,
        "INSERT INTO t (begin, end) VALUES (1, 2)",
        "SELECT 2",
    ]


SQLITE_FRAGMENTS = [
    ";", ";", ";", "'", '"', "`", "[", "]", "--", "/*", "*/", "\n", " ", "x", "1", "(",
    "CREATE", "create", "TEMP", "TEMPORARY", "TRIGGER", "trigger", "BEGIN", "END", "end",
    "CASE", "WHEN", "THEN", ".", "$", "é", "new.end", "'a;b'",
]  # fmt: skip


@FAST
@given(
    parts=st.lists(
        st.tuples(st.sampled_from(SQLITE_FRAGMENTS), st.sampled_from(["", " ", "\n"])),
        max_size=40,
    )
)
def test_sqlite_boundaries_agree_with_complete_statement(parts: list[tuple[str, str]]) -> None:
    sql = "".join(a + b for a, b in parts)
    try:
        statements = split(sql, "sqlite")
    except SplitError:
        assert not sqlite3.complete_statement(sql)
        return
    for i, s in enumerate(statements):
        assert not sqlite3.complete_statement(s.text), s.text
        if i < len(statements) - 1 or sqlite3.complete_statement(sql):
            assert sqlite3.complete_statement(s.text + "\n;"), s.text


@STRUCTURED
@given(statements=st.lists(simple_statement("sqlite"), min_size=1, max_size=6))
def test_sqlite_simple_statements_are_complete(statements: list[str]) -> None:
    for s in split(";\n".join(statements) + ";", "sqlite"):
        assert sqlite3.complete_statement(s.text + ";")


# Differential test: the regex-driven scanner against a naive character loop
# that implements the quoting and comment rules (no routine bodies, no mysql
# DELIMITER), on text made of the characters that matter.


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or ch >= "\x80"


def reference_split(sql: str, dialect: Dialect) -> list[str] | None:
    """Statement texts, or None where the text cannot be split."""
    out: list[str] = []
    n = len(sql)
    i = 1 if sql.startswith("\ufeff") else 0
    first = -1
    quotes = {"postgres": "'\"", "mysql": "'\"`", "sqlite": "'\"`["}[dialect]
    while i < n:
        c = sql[i]
        if c == ";":
            if first >= 0:
                out.append(sql[first:i].rstrip())
            first = -1
            i += 1
        elif c in quotes:
            close = "]" if c == "[" else c
            backslash = (dialect == "mysql" and c != "`") or (
                dialect == "postgres"
                and c == "'"
                and i > 0
                and sql[i - 1] in "eE"
                and (i < 2 or not _ident_char(sql[i - 2]))
            )
            j = i + 1
            while True:
                if j >= n:
                    return None
                if backslash and sql[j] == "\\":
                    j += 2
                elif sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:
                        j += 2
                    else:
                        break
                else:
                    j += 1
            first = i if first < 0 else first
            i = j + 1
        elif sql.startswith("--", i) and (
            dialect != "mysql" or i + 2 >= n or sql[i + 2] <= " " or sql[i + 2] == "\x7f"
        ):
            while i < n and sql[i] != "\n" and not (dialect == "postgres" and sql[i] == "\r"):
                i += 1
        elif c == "#" and dialect == "mysql":
            while i < n and sql[i] != "\n":
                i += 1
        elif sql.startswith("/*", i):
            if dialect == "mysql" and (sql.startswith("/*!", i) or sql.startswith("/*M!", i)):
                first = i if first < 0 else first
                i += 3
                continue
            depth, j = 1, i + 2
            while depth:
                if j >= n:
                    return None
                if sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                elif dialect == "postgres" and sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                else:
                    j += 1
            i = j
        elif c == "$" and dialect == "postgres" and (i == 0 or not _ident_char(sql[i - 1])):
            j = i + 1
            if j < n and (sql[j].isalpha() or sql[j] == "_" or sql[j] >= "\x80"):
                while j < n and (sql[j].isalnum() or sql[j] == "_" or sql[j] >= "\x80"):
                    j += 1
            if j < n and sql[j] == "$":
                tag = sql[i : j + 1]
                end = sql.find(tag, j + 1)
                if end < 0:
                    return None
                first = i if first < 0 else first
                i = end + len(tag)
            else:
                first = i if first < 0 else first
                i += 1
        else:
            if first < 0 and not c.isspace():
                first = i
            i += 1
    if first >= 0:
        out.append(sql[first:].rstrip())
    return out


LEXICAL_FRAGMENTS = [
    ";", ";", "'", "'", '"', "`", "[", "]", "$", "$$", "$a$", "$b1$", "$1", "a$", "E'", "e'",
    "\\", "\\'", "''", "--", "-- ", "-", "#", "/*", "*/", "/*!", "/*M!", "*", "/", "\n", "\r",
    " ", "\t", "x", "1", "é", "_", "\x7f", "\x00",
]  # fmt: skip


@pytest.mark.parametrize("dialect", DIALECTS)
@FAST
@given(parts=st.lists(st.sampled_from(LEXICAL_FRAGMENTS), max_size=30))
def test_agrees_with_naive_reference(dialect: Dialect, parts: list[str]) -> None:
    sql = "".join(parts)
    expected = reference_split(sql, dialect)
    if expected is None:
        with pytest.raises(SplitError):
            split_statements(sql, dialect)
    else:
        assert texts(sql, dialect) == expected
