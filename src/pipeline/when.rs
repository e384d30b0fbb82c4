//! `when` conditions (Semaphore's conditions DSL), parsed and evaluated
//! against the local git state.
//!
//! Grammar (from the DSL's reference, in our own words): terms joined by
//! `and`/`or` (either case; `and` binds tighter), parentheses, `true` /
//! `false`, `keyword op 'string'` or `'string' op keyword` with keywords
//! `branch`, `tag`, `pull_request`, `result`, `result_reason` and
//! operators `=`, `!=`, `=~`, `!~` (regular expressions; the `regex-lite`
//! dialect, which lacks look-around), and functions such as
//! `change_in('/lib', {default_branch: 'main'})` taking strings, lists
//! and maps.
//!
//! Evaluation is three-valued: what a local run cannot know (`result`,
//! `result_reason`, `${{parameters...}}`, an unknown function, a
//! `change_in` git cannot answer) is `Unknown` with a reason, and
//! `and`/`or` follow Kleene's rules, so `false and <unknown>` is still
//! false. The caller runs a block whose condition stays unknown and says
//! why once.

use std::collections::BTreeMap;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Bool(bool),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare {
        keyword: String,
        op: Op,
        value: String,
    },
    Call {
        name: String,
        args: Vec<Arg>,
    },
    /// Something a local run can parse but never decide (parameters).
    Opaque(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Match,
    NoMatch,
}

/// A function argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Bool(bool),
    Number(String),
    List(Vec<Arg>),
    Map(BTreeMap<String, Arg>),
}

impl Arg {
    /// The strings of a string or a list of strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Arg::Str(s) => vec![s.clone()],
            Arg::List(items) => items.iter().flat_map(Arg::strings).collect(),
            _ => Vec::new(),
        }
    }
}

/// A three-valued answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    Yes,
    No,
    /// Cannot be decided locally, and why.
    Unknown(String),
}

impl Truth {
    fn from_bool(b: bool) -> Truth {
        if b {
            Truth::Yes
        } else {
            Truth::No
        }
    }
}

/// What a condition is evaluated against.
pub trait Facts {
    /// `branch`, `tag` or `pull_request`: the value, empty when the run is
    /// not on one.
    fn keyword(&self, name: &str) -> Option<String>;
    /// `change_in(args)`: `Err` says why it cannot be decided (boxed: the
    /// facts' own error, a run's is `git::GitError`).
    fn change_in(&self, args: &[Arg]) -> Result<bool, Box<dyn std::error::Error>>;
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Number(String),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
}

fn tokens(text: &str) -> Result<Vec<Token>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::LParen);
                i += 1
            }
            ')' => {
                out.push(Token::RParen);
                i += 1
            }
            '[' => {
                out.push(Token::LBracket);
                i += 1
            }
            ']' => {
                out.push(Token::RBracket);
                i += 1
            }
            '{' => {
                out.push(Token::LBrace);
                i += 1
            }
            '}' => {
                out.push(Token::RBrace);
                i += 1
            }
            ',' => {
                out.push(Token::Comma);
                i += 1
            }
            ':' => {
                out.push(Token::Colon);
                i += 1
            }
            '=' | '!' => {
                let next = chars.get(i + 1).copied();
                let op = match (c, next) {
                    ('=', Some('~')) => Op::Match,
                    ('!', Some('~')) => Op::NoMatch,
                    ('!', Some('=')) => Op::Ne,
                    ('=', _) => Op::Eq,
                    _ => {
                        return Err(ConditionError::UnexpectedChar {
                            found: c,
                            at: i + 1,
                        })
                    }
                };
                i += if op == Op::Eq { 1 } else { 2 };
                out.push(Token::Op(op));
            }
            '\'' | '"' => {
                let quote = c;
                let start = i;
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(ConditionError::UnclosedString { at: start + 1 }),
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Str(s));
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                // `${{parameters.X}}` inside an expression: kept whole.
                let start = i;
                while i < chars.len() && !(chars[i] == '}' && chars.get(i + 1) == Some(&'}')) {
                    i += 1;
                }
                i = (i + 2).min(chars.len());
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Token::Number(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
            other => {
                return Err(ConditionError::UnexpectedChar {
                    found: other,
                    at: i + 1,
                })
            }
        }
    }
    Ok(out)
}

const KEYWORDS: &[&str] = &["branch", "tag", "pull_request", "result", "result_reason"];

fn keyword(word: &str) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    // The DSL spells each keyword all lower or all upper case.
    (KEYWORDS.contains(&lower.as_str()) && (word == lower || word == word.to_ascii_uppercase()))
        .then_some(lower)
}

/// Why a condition does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionError {
    /// Nothing but blanks.
    Empty,
    /// A character no token starts with; `at` counts from 1.
    UnexpectedChar { found: char, at: usize },
    /// A quote without its closing twin; `at` is where it opened.
    UnclosedString { at: usize },
    /// A whole condition followed by more tokens.
    Trailing { found: String },
    /// A token other than the one the grammar needs here.
    Expected { wanted: String, found: String },
    /// A bare word that is no keyword, `true`/`false` or function call.
    UnknownKeyword { found: String },
}

impl std::fmt::Display for ConditionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionError::Empty => f.write_str("an empty condition"),
            ConditionError::UnexpectedChar { found, at } => {
                write!(f, "unexpected {found:?} at character {at}")
            }
            ConditionError::UnclosedString { at } => {
                write!(f, "a string opened at character {at} is not closed")
            }
            ConditionError::Trailing { found } => {
                write!(f, "unexpected {found} after the condition")
            }
            ConditionError::Expected { wanted, found } => {
                write!(f, "expected {wanted} but found {found}")
            }
            ConditionError::UnknownKeyword { found } => write!(f, "unknown keyword {found}"),
        }
    }
}

impl std::error::Error for ConditionError {}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

/// Parses a condition; the error says what is wrong.
pub fn parse(text: &str) -> Result<Expr, ConditionError> {
    let mut p = Parser {
        tokens: tokens(text)?,
        at: 0,
    };
    if p.tokens.is_empty() {
        return Err(ConditionError::Empty);
    }
    let e = p.or()?;
    if p.at < p.tokens.len() {
        return Err(ConditionError::Trailing {
            found: p.describe(),
        });
    }
    Ok(e)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "the end".into(),
            Some(Token::Word(w)) => format!("'{w}'"),
            Some(Token::Str(s)) => format!("the string '{s}'"),
            Some(t) => format!("{t:?}"),
        }
    }

    /// The error for a token other than `wanted` at the current place.
    fn expected(&self, wanted: String) -> ConditionError {
        ConditionError::Expected {
            wanted,
            found: self.describe(),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn or(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.and()?;
        while self.is_word("or") {
            self.at += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.term()?;
        while self.is_word("and") {
            self.at += 1;
            let right = self.term()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn op(&mut self) -> Result<Op, ConditionError> {
        match self.next() {
            Some(Token::Op(op)) => Ok(op),
            _ => {
                self.at -= 1;
                Err(self.expected("=, !=, =~ or !~".into()))
            }
        }
    }

    fn string(&mut self) -> Result<String, ConditionError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            Some(Token::Word(w)) if w.starts_with("${{") => Ok(w),
            _ => {
                self.at -= 1;
                Err(self.expected("a quoted string".into()))
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ConditionError> {
        match self.next() {
            Some(Token::LParen) => {
                let e = self.or()?;
                match self.next() {
                    Some(Token::RParen) => Ok(e),
                    _ => {
                        self.at -= 1;
                        Err(self.expected("')'".into()))
                    }
                }
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(Expr::Bool(true)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(Expr::Bool(false)),
            Some(Token::Word(w)) if keyword(&w).is_some() => {
                let op = self.op()?;
                let value = self.string()?;
                Ok(compare(keyword(&w).unwrap_or_default(), op, value))
            }
            Some(Token::Str(s)) => {
                let op = self.op()?;
                if s.contains("${{") {
                    let _ = self.next();
                    return Ok(Expr::Opaque("the condition uses parameters".into()));
                }
                match self.next() {
                    Some(Token::Word(w)) if keyword(&w).is_some() => {
                        Ok(compare(keyword(&w).unwrap_or_default(), op, s))
                    }
                    _ => {
                        self.at -= 1;
                        Err(self
                            .expected("branch, tag, pull_request, result or result_reason".into()))
                    }
                }
            }
            Some(Token::Word(w)) if w.starts_with("${{") => {
                // `${{parameters.X}} = 'v'`
                let _ = self.op()?;
                let _ = self.next();
                Ok(Expr::Opaque("the condition uses parameters".into()))
            }
            Some(Token::Word(w)) if w.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) => {
                if self.peek() != Some(&Token::LParen) {
                    self.at -= 1;
                    return Err(ConditionError::UnknownKeyword {
                        found: self.describe(),
                    });
                }
                self.at += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Token::RParen) {
                    self.at += 1;
                } else {
                    loop {
                        args.push(self.arg()?);
                        match self.next() {
                            Some(Token::Comma) => {}
                            Some(Token::RParen) => break,
                            _ => {
                                self.at -= 1;
                                return Err(self.expected(format!("',' or ')' in {w}(...)")));
                            }
                        }
                    }
                }
                Ok(Expr::Call { name: w, args })
            }
            _ => {
                self.at = self.at.saturating_sub(1);
                Err(self.expected("a condition".into()))
            }
        }
    }

    fn arg(&mut self) -> Result<Arg, ConditionError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Arg::Str(s)),
            Some(Token::Number(n)) => Ok(Arg::Number(n)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(Arg::Bool(true)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(Arg::Bool(false)),
            Some(Token::LBracket) => {
                let mut items = Vec::new();
                if self.peek() == Some(&Token::RBracket) {
                    self.at += 1;
                    return Ok(Arg::List(items));
                }
                loop {
                    items.push(self.arg()?);
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::RBracket) => return Ok(Arg::List(items)),
                        _ => {
                            self.at -= 1;
                            return Err(self.expected("',' or ']'".into()));
                        }
                    }
                }
            }
            Some(Token::LBrace) => {
                let mut map = BTreeMap::new();
                if self.peek() == Some(&Token::RBrace) {
                    self.at += 1;
                    return Ok(Arg::Map(map));
                }
                loop {
                    let key = match self.next() {
                        Some(Token::Word(k)) => k,
                        _ => {
                            self.at -= 1;
                            return Err(self.expected("a key".into()));
                        }
                    };
                    if self.next() != Some(Token::Colon) {
                        self.at -= 1;
                        return Err(self.expected(format!("':' after {key}")));
                    }
                    map.insert(key, self.arg()?);
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::RBrace) => return Ok(Arg::Map(map)),
                        _ => {
                            self.at -= 1;
                            return Err(self.expected("',' or '}'".into()));
                        }
                    }
                }
            }
            _ => {
                self.at = self.at.saturating_sub(1);
                Err(self.expected("a value".into()))
            }
        }
    }
}

fn compare(keyword: String, op: Op, value: String) -> Expr {
    if value.contains("${{") {
        return Expr::Opaque("the condition uses parameters".into());
    }
    Expr::Compare { keyword, op, value }
}

/// Evaluates `expr` against `facts`.
pub fn eval(expr: &Expr, facts: &dyn Facts) -> Truth {
    match expr {
        Expr::Bool(b) => Truth::from_bool(*b),
        Expr::And(a, b) => match (eval(a, facts), eval(b, facts)) {
            (Truth::No, _) | (_, Truth::No) => Truth::No,
            (Truth::Yes, Truth::Yes) => Truth::Yes,
            (Truth::Unknown(r), _) | (_, Truth::Unknown(r)) => Truth::Unknown(r),
        },
        Expr::Or(a, b) => match (eval(a, facts), eval(b, facts)) {
            (Truth::Yes, _) | (_, Truth::Yes) => Truth::Yes,
            (Truth::No, Truth::No) => Truth::No,
            (Truth::Unknown(r), _) | (_, Truth::Unknown(r)) => Truth::Unknown(r),
        },
        Expr::Compare { keyword, op, value } => {
            let Some(actual) = facts.keyword(keyword) else {
                return Truth::Unknown(format!(
                    "{keyword} is only known after a pipeline ran on Semaphore"
                ));
            };
            match op {
                Op::Eq => Truth::from_bool(actual == *value),
                Op::Ne => Truth::from_bool(actual != *value),
                Op::Match | Op::NoMatch => match regex_lite::Regex::new(value) {
                    // Semaphore matches only when there is a value: on a
                    // branch, `tag =~ '.*'` is false.
                    Ok(re) => {
                        let found = !actual.is_empty() && re.is_match(&actual);
                        Truth::from_bool(found == (*op == Op::Match))
                    }
                    Err(e) => Truth::Unknown(format!("the regular expression '{value}': {e}")),
                },
            }
        }
        Expr::Call { name, args } if name == "change_in" => match facts.change_in(args) {
            Ok(b) => Truth::from_bool(b),
            Err(why) => Truth::Unknown(why.to_string()),
        },
        Expr::Call { name, .. } => {
            Truth::Unknown(format!("the function {name}() is not known to a local run"))
        }
        Expr::Opaque(why) => Truth::Unknown(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct F {
        branch: &'static str,
        tag: &'static str,
        changed: Result<bool, String>,
    }

    impl Facts for F {
        fn keyword(&self, name: &str) -> Option<String> {
            match name {
                "branch" => Some(self.branch.into()),
                "tag" => Some(self.tag.into()),
                "pull_request" => Some(String::new()),
                _ => None,
            }
        }
        fn change_in(&self, _: &[Arg]) -> Result<bool, Box<dyn std::error::Error>> {
            self.changed.clone().map_err(Into::into)
        }
    }

    fn truth(text: &str, f: &F) -> Truth {
        eval(
            &parse(text).unwrap_or(Expr::Opaque(format!("parse: {text}"))),
            f,
        )
    }

    #[test]
    fn keywords_operators_and_boolean_logic() {
        let f = F {
            branch: "dev/x",
            tag: "",
            changed: Ok(true),
        };
        for (text, want) in [
            ("true", Truth::Yes),
            ("FALSE", Truth::No),
            ("branch = 'dev/x'", Truth::Yes),
            ("'dev/x' = branch", Truth::Yes),
            ("branch != 'dev/x'", Truth::No),
            ("branch =~ '^dev/'", Truth::Yes),
            ("BRANCH !~ '^dev/'", Truth::No),
            ("tag =~ '.*'", Truth::No),
            ("pull_request =~ '.*'", Truth::No),
            ("branch = 'master' OR branch = 'dev/x'", Truth::Yes),
            ("branch = 'master' or tag =~ '^v1\\.'", Truth::No),
            // `and` binds tighter than `or`.
            ("branch = 'dev/x' or branch = 'a' and false", Truth::Yes),
            ("(branch = 'dev/x' or branch = 'a') and false", Truth::No),
            ("change_in('/lib')", Truth::Yes),
            (
                "change_in(['/lib', '/app'], {default_branch: 'main', exclude: ['/docs'], on_tags: false})",
                Truth::Yes,
            ),
        ] {
            assert_eq!(truth(text, &f), want, "{text}");
        }
    }

    #[test]
    fn what_cannot_be_known_locally_is_unknown_unless_decided() {
        let f = F {
            branch: "main",
            tag: "",
            changed: Err("no git".into()),
        };
        assert!(matches!(truth("result = 'passed'", &f), Truth::Unknown(_)));
        assert!(matches!(
            truth("'${{parameters.ENV}}' = 'prod'", &f),
            Truth::Unknown(_)
        ));
        assert!(matches!(truth("change_in('/x')", &f), Truth::Unknown(w) if w == "no git"));
        assert_eq!(truth("false and result = 'passed'", &f), Truth::No);
        assert_eq!(truth("branch = 'main' or change_in('/x')", &f), Truth::Yes);
        assert!(matches!(truth("other_fn()", &f), Truth::Unknown(_)));
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        for (text, part) in [
            ("branch = ", "expected a quoted string but found the end"),
            ("branch == 'x'", "expected a quoted string"),
            ("branch = 'x", "not closed"),
            ("(true", "expected ')'"),
            ("true true", "unexpected 'true'"),
            ("bogus = 'x'", "unknown keyword 'bogus'"),
            ("", "empty"),
            ("change_in('/a' '/b')", "expected ',' or ')'"),
        ] {
            match parse(text) {
                Ok(e) => panic!("{text} parsed as {e:?}"),
                Err(e) => assert!(e.to_string().contains(part), "{text}: {e}"),
            }
        }
    }
}
