//! STIX 2.1 patterning (STIX 2.1 part 5, and the OASIS ANTLR grammar that
//! stix2-patterns implements): a lexer and a recursive-descent parser
//! into a syntax tree. Beacon reads patterns from STIX bundles posted over
//! TAXII; what it can hold of a pattern (exact values) is decided from the
//! tree, in `stix`, so a pattern is refused for what it says, never for how
//! a hand-written split happened to read it.
//!
//! Written here rather than taken from a crate: no maintained Rust crate
//! implements the STIX pattern grammar.
//!
//! ```text
//! pattern      := obs_or (FOLLOWEDBY obs_or)*
//! obs_or       := obs_and (OR obs_and)*
//! obs_and      := obs_qual (AND obs_qual)*
//! obs_qual     := obs_atom qualifier*
//! obs_atom     := '[' cmp_or ']' | '(' pattern ')'
//! qualifier    := START t'..' STOP t'..' | WITHIN number SECONDS | REPEATS int TIMES
//! cmp_or       := cmp_and (OR cmp_and)*
//! cmp_and      := cmp_atom (AND cmp_atom)*
//! cmp_atom     := '(' cmp_or ')' | EXISTS path | path NOT? op literal
//! op           := = == != <> < <= > >= IN LIKE MATCHES ISSUBSET ISSUPERSET
//! path         := type ':' step ('.' step | '[' (int | '*') ']')*
//! literal      := 'string' | int | float | true | false | b'..' | h'..' | t'..' | '(' literal, … ')'
//! ```

/// Nesting deeper than this is refused (a hostile pattern cannot exhaust
/// the stack).
const MAX_DEPTH: usize = 64;
/// Longer patterns are refused.
const MAX_LEN: usize = 64 * 1024;

/// An observation expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// `[ … ]`: one observation whose object matches the comparison.
    Observation(Comparison),
    Or(Vec<Pattern>),
    And(Vec<Pattern>),
    FollowedBy(Vec<Pattern>),
    Qualified(Box<Pattern>, Qualifier),
}

/// A comparison expression, inside brackets.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    Or(Vec<Comparison>),
    And(Vec<Comparison>),
    Test(Test),
}

/// One property test.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    pub path: ObjectPath,
    pub negated: bool,
    pub op: Op,
    /// `None` for `EXISTS`.
    pub value: Option<Literal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Like,
    Matches,
    IsSubset,
    IsSuperset,
    Exists,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "IN",
            Op::Like => "LIKE",
            Op::Matches => "MATCHES",
            Op::IsSubset => "ISSUBSET",
            Op::IsSuperset => "ISSUPERSET",
            Op::Exists => "EXISTS",
        }
    }
}

/// `type:step.step[0]…`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    pub object_type: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Property(String),
    Index(i64),
    AnyIndex,
}

impl std::fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.object_type)?;
        for (i, s) in self.steps.iter().enumerate() {
            match s {
                Step::Property(p) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        f.write_str(p)?;
                    } else {
                        write!(f, "'{p}'")?;
                    }
                }
                Step::Index(n) => write!(f, "[{n}]")?,
                Step::AnyIndex => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Binary(String),
    Hex(String),
    Timestamp(String),
    Set(Vec<Literal>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Qualifier {
    StartStop(String, String),
    Within(f64),
    Repeats(u64),
}

impl Qualifier {
    pub fn name(&self) -> &'static str {
        match self {
            Qualifier::StartStop(..) => "START … STOP",
            Qualifier::Within(_) => "WITHIN",
            Qualifier::Repeats(_) => "REPEATS",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBracket,
    RBracket,
    LParen,
    RParen,
    Colon,
    Dot,
    Comma,
    Star,
    Op(Op),
    Word(String),
    Str(String),
    Int(i64),
    Float(f64),
    Binary(String),
    Hex(String),
    Timestamp(String),
}

/// A token and the byte offset it starts at.
type Lexed = (Tok, usize);

fn lex(p: &str) -> Result<Vec<Lexed>, String> {
    let b = p.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'[' => out.push((Tok::LBracket, at)),
            b']' => out.push((Tok::RBracket, at)),
            b'(' => out.push((Tok::LParen, at)),
            b')' => out.push((Tok::RParen, at)),
            b':' => out.push((Tok::Colon, at)),
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => out.push((Tok::Dot, at)),
            b',' => out.push((Tok::Comma, at)),
            b'*' => out.push((Tok::Star, at)),
            b'=' => {
                if b.get(i + 1) == Some(&b'=') {
                    i += 1;
                }
                out.push((Tok::Op(Op::Eq), at));
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                i += 1;
                out.push((Tok::Op(Op::Ne), at));
            }
            b'<' => match b.get(i + 1) {
                Some(b'=') => {
                    i += 1;
                    out.push((Tok::Op(Op::Le), at));
                }
                Some(b'>') => {
                    i += 1;
                    out.push((Tok::Op(Op::Ne), at));
                }
                _ => out.push((Tok::Op(Op::Lt), at)),
            },
            b'>' => {
                if b.get(i + 1) == Some(&b'=') {
                    i += 1;
                    out.push((Tok::Op(Op::Ge), at));
                } else {
                    out.push((Tok::Op(Op::Gt), at));
                }
            }
            b'\'' => {
                let (s, next) = string(p, i)?;
                out.push((Tok::Str(s), at));
                i = next;
                continue;
            }
            b'b' | b'h' | b't' if b.get(i + 1) == Some(&b'\'') => {
                let (s, next) = string(p, i + 1)?;
                let tok = match c {
                    b'b' => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(&s)
                            .map_err(|_| format!("b'{s}' at {at} is not base64"))?;
                        Tok::Binary(s)
                    }
                    b'h' => {
                        if s.len() % 2 != 0 || !s.bytes().all(|x| x.is_ascii_hexdigit()) {
                            return Err(format!("h'{s}' at {at} is not hex"));
                        }
                        Tok::Hex(s)
                    }
                    _ => {
                        let ok = s.ends_with('Z')
                            && time::OffsetDateTime::parse(
                                &s,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .is_ok();
                        if !ok {
                            return Err(format!("t'{s}' at {at} is not a UTC RFC 3339 timestamp"));
                        }
                        Tok::Timestamp(s)
                    }
                };
                out.push((tok, at));
                i = next;
                continue;
            }
            b'-' | b'+' | b'0'..=b'9' | b'.' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                let text = &p[i..j];
                let tok = if text.contains('.') {
                    Tok::Float(
                        text.parse()
                            .map_err(|_| format!("{text:?} at {at} is not a number"))?,
                    )
                } else {
                    Tok::Int(
                        text.parse()
                            .map_err(|_| format!("{text:?} at {at} is not a number"))?,
                    )
                };
                out.push((tok, at));
                i = j;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-')
                {
                    j += 1;
                }
                out.push((Tok::Word(p[i..j].to_owned()), at));
                i = j;
                continue;
            }
            _ => {
                let ch = p[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected {ch:?} at {at}"));
            }
        }
        i += 1;
    }
    Ok(out)
}

/// A quoted string starting at `b[start] == '\''`: its value and the
/// offset after its closing quote. Inside, `\'` and `\\` are the only
/// escapes.
fn string(p: &str, start: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = p[start + 1..].char_indices();
    while let Some((k, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('\\' | '\''))) => out.push(e),
                _ => {
                    return Err(format!(
                        "a string at {start} has a bad escape (only \\' and \\\\)"
                    ))
                }
            },
            '\'' => return Ok((out, start + 1 + k + 1)),
            c => out.push(c),
        }
    }
    Err(format!("a string at {start} is not closed"))
}

struct Parser<'a> {
    toks: &'a [Lexed],
    at: usize,
    depth: usize,
    len: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.at).map_or(self.len, |(_, o)| *o)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        t
    }

    fn word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), String> {
        let at = self.offset();
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(format!("expected {what} at {at}, found {}", describe(&t))),
            None => Err(format!("expected {what} at {at}, found the end")),
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    /// `item (WORD item)*`: one item as itself, several as `many` of them.
    fn joined<T>(
        &mut self,
        word: &str,
        item: fn(&mut Self) -> Result<T, String>,
        many: fn(Vec<T>) -> T,
    ) -> Result<T, String> {
        let mut parts = vec![item(self)?];
        while self.word(word) {
            self.at += 1;
            parts.push(item(self)?);
        }
        Ok(one_or(parts, many))
    }

    fn pattern(&mut self) -> Result<Pattern, String> {
        self.deeper()?;
        let p = self.joined("FOLLOWEDBY", Self::obs_or, Pattern::FollowedBy)?;
        self.depth -= 1;
        Ok(p)
    }

    fn obs_or(&mut self) -> Result<Pattern, String> {
        self.joined("OR", Self::obs_and, Pattern::Or)
    }

    fn obs_and(&mut self) -> Result<Pattern, String> {
        self.joined("AND", Self::obs_qualified, Pattern::And)
    }

    fn obs_qualified(&mut self) -> Result<Pattern, String> {
        let mut p = self.obs_atom()?;
        loop {
            let q = if self.word("START") {
                self.at += 1;
                let a = self.timestamp()?;
                if !self.word("STOP") {
                    return Err(format!("expected STOP at {}", self.offset()));
                }
                self.at += 1;
                Qualifier::StartStop(a, self.timestamp()?)
            } else if self.word("WITHIN") {
                self.at += 1;
                let at = self.offset();
                let n = match self.next() {
                    Some(Tok::Int(n)) if n > 0 => n as f64,
                    Some(Tok::Float(f)) if f > 0.0 => f,
                    _ => return Err(format!("expected a positive number of seconds at {at}")),
                };
                if !self.word("SECONDS") {
                    return Err(format!("expected SECONDS at {}", self.offset()));
                }
                self.at += 1;
                Qualifier::Within(n)
            } else if self.word("REPEATS") {
                self.at += 1;
                let at = self.offset();
                let n = match self.next() {
                    Some(Tok::Int(n)) if n > 0 => n as u64,
                    _ => return Err(format!("expected a positive count at {at}")),
                };
                if !self.word("TIMES") {
                    return Err(format!("expected TIMES at {}", self.offset()));
                }
                self.at += 1;
                Qualifier::Repeats(n)
            } else {
                return Ok(p);
            };
            p = Pattern::Qualified(Box::new(p), q);
        }
    }

    fn timestamp(&mut self) -> Result<String, String> {
        let at = self.offset();
        match self.next() {
            Some(Tok::Timestamp(t)) => Ok(t),
            _ => Err(format!("expected a timestamp t'…' at {at}")),
        }
    }

    fn obs_atom(&mut self) -> Result<Pattern, String> {
        let at = self.offset();
        match self.next() {
            Some(Tok::LBracket) => {
                let c = self.cmp_or()?;
                self.expect(Tok::RBracket, "']'")?;
                Ok(Pattern::Observation(c))
            }
            Some(Tok::LParen) => {
                let p = self.pattern()?;
                self.expect(Tok::RParen, "')'")?;
                Ok(p)
            }
            Some(t) => Err(format!(
                "expected an observation '[…]' at {at}, found {}",
                describe(&t)
            )),
            None => Err(format!(
                "expected an observation '[…]' at {at}, found the end"
            )),
        }
    }

    fn cmp_or(&mut self) -> Result<Comparison, String> {
        self.deeper()?;
        let c = self.joined("OR", Self::cmp_and, Comparison::Or)?;
        self.depth -= 1;
        Ok(c)
    }

    fn cmp_and(&mut self) -> Result<Comparison, String> {
        self.joined("AND", Self::cmp_atom, Comparison::And)
    }

    fn cmp_atom(&mut self) -> Result<Comparison, String> {
        if self.peek() == Some(&Tok::LParen) {
            self.at += 1;
            let c = self.cmp_or()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(c);
        }
        if self.word("EXISTS") {
            self.at += 1;
            return Ok(Comparison::Test(Test {
                path: self.path()?,
                negated: false,
                op: Op::Exists,
                value: None,
            }));
        }
        let path = self.path()?;
        let negated = self.word("NOT");
        if negated {
            self.at += 1;
        }
        let at = self.offset();
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            Some(Tok::Word(w)) => match w.as_str() {
                "IN" => Op::In,
                "LIKE" => Op::Like,
                "MATCHES" => Op::Matches,
                "ISSUBSET" => Op::IsSubset,
                "ISSUPERSET" => Op::IsSuperset,
                other => {
                    return Err(format!(
                        "expected a comparison operator at {at}, found {other}"
                    ))
                }
            },
            Some(t) => {
                return Err(format!(
                    "expected a comparison operator at {at}, found {}",
                    describe(&t)
                ))
            }
            None => {
                return Err(format!(
                    "expected a comparison operator at {at}, found the end"
                ))
            }
        };
        let value = self.literal(op)?;
        Ok(Comparison::Test(Test {
            path,
            negated,
            op,
            value: Some(value),
        }))
    }

    fn literal(&mut self, op: Op) -> Result<Literal, String> {
        let at = self.offset();
        let lit = match self.next() {
            Some(Tok::Str(s)) => Literal::Str(s),
            Some(Tok::Int(n)) => Literal::Int(n),
            Some(Tok::Float(f)) => Literal::Float(f),
            Some(Tok::Binary(s)) => Literal::Binary(s),
            Some(Tok::Hex(s)) => Literal::Hex(s),
            Some(Tok::Timestamp(s)) => Literal::Timestamp(s),
            Some(Tok::Word(w)) if w == "true" || w == "false" => Literal::Bool(w == "true"),
            Some(Tok::LParen) if op == Op::In => {
                let mut items = Vec::new();
                if self.peek() == Some(&Tok::RParen) {
                    self.at += 1;
                    return Ok(Literal::Set(items));
                }
                loop {
                    let item = self.literal(Op::Eq)?;
                    if matches!(item, Literal::Set(_)) {
                        return Err(format!("a set inside a set at {at}"));
                    }
                    items.push(item);
                    let at = self.offset();
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RParen) => break,
                        _ => return Err(format!("expected ',' or ')' in a set at {at}")),
                    }
                }
                return Ok(Literal::Set(items));
            }
            Some(t) => return Err(format!("expected a value at {at}, found {}", describe(&t))),
            None => return Err(format!("expected a value at {at}, found the end")),
        };
        let fits = match op {
            Op::In => false,
            Op::Like | Op::Matches | Op::IsSubset | Op::IsSuperset => {
                matches!(lit, Literal::Str(_))
            }
            Op::Lt | Op::Le | Op::Gt | Op::Ge => !matches!(lit, Literal::Bool(_)),
            _ => true,
        };
        if !fits {
            return Err(format!("{} cannot take the value at {at}", op.name()));
        }
        Ok(lit)
    }

    fn path(&mut self) -> Result<ObjectPath, String> {
        let at = self.offset();
        let object_type = match self.next() {
            Some(Tok::Word(w)) => w,
            Some(t) => {
                return Err(format!(
                    "expected an object type at {at}, found {}",
                    describe(&t)
                ))
            }
            None => return Err(format!("expected an object type at {at}, found the end")),
        };
        self.expect(Tok::Colon, "':' after the object type")?;
        let mut steps = vec![self.property()?];
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.at += 1;
                    steps.push(self.property()?);
                }
                Some(Tok::LBracket) => {
                    self.at += 1;
                    let at = self.offset();
                    let step = match self.next() {
                        Some(Tok::Int(n)) => Step::Index(n),
                        Some(Tok::Star) => Step::AnyIndex,
                        _ => return Err(format!("expected an index or '*' at {at}")),
                    };
                    self.expect(Tok::RBracket, "']' after an index")?;
                    steps.push(step);
                }
                _ => return Ok(ObjectPath { object_type, steps }),
            }
        }
    }

    fn property(&mut self) -> Result<Step, String> {
        let at = self.offset();
        match self.next() {
            Some(Tok::Word(w)) => Ok(Step::Property(w)),
            Some(Tok::Str(s)) => Ok(Step::Property(s)),
            Some(t) => Err(format!(
                "expected a property name at {at}, found {}",
                describe(&t)
            )),
            None => Err(format!("expected a property name at {at}, found the end")),
        }
    }
}

fn one_or<T>(mut parts: Vec<T>, many: impl FnOnce(Vec<T>) -> T) -> T {
    if parts.len() == 1 {
        if let Some(p) = parts.pop() {
            return p;
        }
    }
    many(parts)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Colon => "':'".into(),
        Tok::Dot => "'.'".into(),
        Tok::Comma => "','".into(),
        Tok::Star => "'*'".into(),
        Tok::Op(op) => format!("'{}'", op.name()),
        Tok::Word(w) => w.clone(),
        Tok::Str(s) => format!("the string '{s}'"),
        Tok::Int(n) => n.to_string(),
        Tok::Float(f) => f.to_string(),
        Tok::Binary(_) => "a binary value".into(),
        Tok::Hex(_) => "a hex value".into(),
        Tok::Timestamp(t) => format!("t'{t}'"),
    }
}

/// Parses a STIX 2.1 pattern; the error says what is wrong and where (a
/// byte offset).
pub fn parse(p: &str) -> Result<Pattern, String> {
    if p.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    let toks = lex(p)?;
    if toks.is_empty() {
        return Err("empty".into());
    }
    let mut parser = Parser {
        toks: &toks,
        at: 0,
        depth: 0,
        len: p.len(),
    };
    let out = parser.pattern()?;
    if let Some((t, at)) = toks.get(parser.at) {
        return Err(format!("unexpected {} at {at}", describe(t)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(path: &str, op: Op, v: Literal) -> Comparison {
        let (t, rest) = path.split_once(':').unwrap();
        Comparison::Test(Test {
            path: ObjectPath {
                object_type: t.into(),
                steps: rest.split('.').map(|s| Step::Property(s.into())).collect(),
            },
            negated: false,
            op,
            value: Some(v),
        })
    }

    #[test]
    fn the_specifications_examples_parse() {
        for p in [
            "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']",
            "[email-message:from_ref.value MATCHES '.+\\\\@example\\\\.com$' AND email-message:body_multipart[*].body_raw_ref.name MATCHES '^Final Report.+\\\\.exe$']",
            "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f' OR file:hashes.MD5 = 'cead3f77f6cda6ec00f57d76c9a6879f']",
            "[domain-name:value = 'a'] OR [domain-name:value = 'b']",
            "([ipv4-addr:value = '198.51.100.1/32' OR ipv4-addr:value = '203.0.113.33/32'] AND [domain-name:value = 'example.com']) WITHIN 600 SECONDS",
            "[file:name = 'foo.dll'] FOLLOWEDBY [process:name = 'x'] REPEATS 5 TIMES WITHIN 1800 SECONDS",
            "[network-traffic:dst_port IN (80, 443)] START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z'",
            "[x509-certificate:serial_number = 'x' AND x509-certificate:issuer NOT LIKE '%CA%']",
            "[file:extensions.'windows-pebinary-ext'.sections[*].entropy > 7.0]",
            "[artifact:payload_bin = b'dGhpcyBpcyBhIHRlc3Q=' AND artifact:mime_type == 'x']",
            "[ipv4-addr:value ISSUBSET '198.51.100.0/24']",
            "[file:hashes.MD5 = h'aabb'] AND [user-account:is_admin = true]",
            "[EXISTS windows-registry-key:values[0].name]",
        ] {
            parse(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn or_between_observations_is_read_as_or() {
        let p = parse("[domain-name:value = 'a'] OR [domain-name:value = 'b']").unwrap();
        assert_eq!(
            p,
            Pattern::Or(vec![
                Pattern::Observation(test("domain-name:value", Op::Eq, Literal::Str("a".into()))),
                Pattern::Observation(test("domain-name:value", Op::Eq, Literal::Str("b".into()))),
            ])
        );
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let p = parse("[a:x = 1 OR a:y = 2 AND a:z = 3]").unwrap();
        let Pattern::Observation(Comparison::Or(parts)) = p else {
            panic!("{p:?}")
        };
        assert!(matches!(parts[1], Comparison::And(_)));
    }

    #[test]
    fn strings_keep_escaped_quotes() {
        let p = parse("[url:value = 'https://x.example/it\\'s\\\\here']").unwrap();
        let Pattern::Observation(Comparison::Test(t)) = p else {
            panic!()
        };
        assert_eq!(
            t.value,
            Some(Literal::Str("https://x.example/it's\\here".into()))
        );
    }

    #[test]
    fn bad_patterns_are_refused_with_a_place() {
        for (p, says) in [
            ("[domain-name:value = 'a'", "expected ']'"),
            ("domain-name:value = 'a'", "expected an observation"),
            ("[domain-name:value = 'a']]", "unexpected"),
            ("[domain-name:value = 'a] OR [x:y = 'b']", "not closed"),
            ("[domain-name:value = 'a\\x']", "bad escape"),
            ("[domain-name:value 'a']", "comparison operator"),
            ("[a:b = 'x'] WITHIN -3 SECONDS", "positive"),
            ("[a:b IN 'x']", "IN cannot take"),
            ("[a:b = t'yesterday']", "timestamp"),
            ("", "empty"),
        ] {
            let e = parse(p).expect_err(p);
            assert!(e.contains(says), "{p}: {e}");
        }
        let deep = format!("{}[a:b = 1]{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(&deep).unwrap_err().contains("nested"));
    }

    proptest::proptest! {
        /// Any input is parsed or refused, never a panic.
        #[test]
        fn any_input_is_parsed_or_refused(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }

        /// A string value round-trips through quoting.
        #[test]
        fn quoted_values_round_trip(v in "\\PC{1,40}") {
            let quoted = v.replace('\\', "\\\\").replace('\'', "\\'");
            let p = parse(&format!("[url:value = '{quoted}']")).unwrap();
            let Pattern::Observation(Comparison::Test(t)) = p else { panic!() };
            proptest::prop_assert_eq!(t.value, Some(Literal::Str(v)));
        }
    }
}
