//! Protobuf text format, as Triton's `config.pbtxt` is written: a tree of fields with the line
//! each starts on, read without a schema (unknown blocks parse like known ones, so the caller
//! can skip them). Comments start with `#`; fields may be separated by `,` or `;`; blocks are
//! `{ }` or `< >`, lists `[ ]`; a repeated field may also be written once per value.

/// Blocks nested deeper than this are refused (Triton's configs nest three or four deep).
const MAX_DEPTH: usize = 32;

/// An error at a line: (line, what was expected).
pub(super) type Located = (usize, String);

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// One of `{ } [ ] < > : , ;`.
    Punct(char),
    /// A field name, an enum value or a number.
    Word(String),
    /// A quoted string, unescaped.
    Str(String),
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    tok: Tok,
    line: usize,
}

fn describe(tok: Option<&Token>) -> String {
    match tok.map(|t| &t.tok) {
        None => "the end of the file".into(),
        Some(Tok::Punct(c)) => format!("'{c}'"),
        Some(Tok::Word(w)) => format!("{:?}", w.chars().take(40).collect::<String>()),
        Some(Tok::Str(_)) => "a string".into(),
    }
}

pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, Located> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                while chars.next_if(|&c| c != '\n').is_some() {}
            }
            '{' | '}' | '[' | ']' | '<' | '>' | ':' | ',' | ';' => tokens.push(Token {
                tok: Tok::Punct(c),
                line,
            }),
            '"' | '\'' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err((start, "string not closed on its line".into()))
                        }
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some(e @ ('\\' | '\'' | '"' | '?')) => s.push(e),
                            other => {
                                return Err((
                                    start,
                                    format!(
                                        "unsupported escape \\{} in a string",
                                        other.map(String::from).unwrap_or_default()
                                    ),
                                ))
                            }
                        },
                        Some(ch) => s.push(ch),
                    }
                }
                tokens.push(Token {
                    tok: Tok::Str(s),
                    line: start,
                });
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') => {
                let mut w = String::from(c);
                while let Some(ch) =
                    chars.next_if(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '+' | '.'))
                {
                    w.push(ch);
                }
                tokens.push(Token {
                    tok: Tok::Word(w),
                    line,
                });
            }
            other => {
                return Err((
                    line,
                    format!("unexpected character {other:?}; expected a field name, a value or one of {{ }} [ ] : ,"),
                ))
            }
        }
    }
    Ok(tokens)
}

/// A field's value.
#[derive(Clone, Debug)]
pub(super) enum FieldValue {
    /// A word (number, enum value) or a string (`quoted`).
    Scalar {
        text: String,
        quoted: bool,
    },
    Message(Vec<Field>),
    List(Vec<FieldValue>),
}

#[derive(Clone, Debug)]
pub(super) struct Field {
    pub name: String,
    pub line: usize,
    pub value: FieldValue,
}

impl Field {
    fn found(&self) -> &'static str {
        match &self.value {
            FieldValue::Scalar { quoted: true, .. } => "a string",
            FieldValue::Scalar { .. } => "a word",
            FieldValue::Message(_) => "a block { ... }",
            FieldValue::List(_) => "a list [ ... ]",
        }
    }

    fn expected(&self, what: &str) -> Located {
        (
            self.line,
            format!("expected {what} for {}, found {}", self.name, self.found()),
        )
    }

    pub fn string(&self) -> Result<String, Located> {
        match &self.value {
            FieldValue::Scalar { text, quoted: true } => Ok(text.clone()),
            _ => Err(self.expected("a quoted string")),
        }
    }

    /// An enum value: `TYPE_FP32`, `FORMAT_NCHW`.
    pub fn word(&self) -> Result<String, Located> {
        match &self.value {
            FieldValue::Scalar {
                text,
                quoted: false,
            } if text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Ok(text.clone())
            }
            _ => Err(self.expected("an enum value such as TYPE_FP32")),
        }
    }

    pub fn int(&self) -> Result<i64, Located> {
        match &self.value {
            FieldValue::Scalar {
                text,
                quoted: false,
            } => text.parse().map_err(|_| {
                (
                    self.line,
                    format!("expected an integer for {}, found {text:?}", self.name),
                )
            }),
            _ => Err(self.expected("an integer")),
        }
    }

    /// `dims: 3`, `dims: [ 3, 224, 224 ]`.
    pub fn ints(&self) -> Result<Vec<i64>, Located> {
        let int = |v: &FieldValue| match v {
            FieldValue::Scalar {
                text,
                quoted: false,
            } => text.parse::<i64>().map_err(|_| {
                (
                    self.line,
                    format!("expected integers for {}, found {text:?}", self.name),
                )
            }),
            _ => Err(self.expected("integers")),
        };
        match &self.value {
            FieldValue::List(items) => items.iter().map(int).collect(),
            v => Ok(vec![int(v)?]),
        }
    }

    /// `input { ... }`, `input [ { ... }, { ... } ]`.
    pub fn blocks(&self) -> Result<Vec<&[Field]>, Located> {
        match &self.value {
            FieldValue::Message(m) => Ok(vec![m.as_slice()]),
            FieldValue::List(items) => items
                .iter()
                .map(|v| match v {
                    FieldValue::Message(m) => Ok(m.as_slice()),
                    _ => Err(self.expected("blocks { ... }")),
                })
                .collect(),
            FieldValue::Scalar { .. } => Err(self.expected("a block { ... } or a list [ ... ]")),
        }
    }
}

/// The fields of a whole file.
pub(super) fn parse(tokens: &[Token]) -> Result<Vec<Field>, Located> {
    Parser { tokens, pos: 0 }.message(None, 0, 0)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    /// The line of the next token, or the last line for the end of the file.
    fn line(&self) -> usize {
        self.peek().or(self.tokens.last()).map_or(1, |t| t.line)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek().is_some_and(|t| t.tok == Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Fields up to `close` (or the end of the file at the top level).
    fn message(
        &mut self,
        close: Option<char>,
        opened: usize,
        depth: usize,
    ) -> Result<Vec<Field>, Located> {
        if depth > MAX_DEPTH {
            return Err((opened, format!("blocks nested deeper than {MAX_DEPTH}")));
        }
        let mut fields = Vec::new();
        loop {
            let line = self.line();
            let token = self.next().cloned();
            let name = match token.map(|t| t.tok) {
                None => match close {
                    None => return Ok(fields),
                    Some(c) => {
                        return Err((
                            line,
                            format!(
                                "expected '{c}' to close the block opened on line {opened}, found the end of the file"
                            ),
                        ))
                    }
                },
                Some(Tok::Punct(c)) if Some(c) == close => return Ok(fields),
                Some(Tok::Word(w)) if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => w,
                _ => {
                    self.pos -= 1;
                    let closing = close
                        .map(|c| format!(" or '{c}' to close the block opened on line {opened}"))
                        .unwrap_or_default();
                    return Err((
                        line,
                        format!("expected a field name{closing}, found {}", describe(self.peek())),
                    ));
                }
            };
            let colon = self.eat(':');
            let value_line = self.line();
            let value = match self.peek().map(|t| t.tok.clone()) {
                Some(Tok::Punct('{')) => {
                    self.pos += 1;
                    FieldValue::Message(self.message(Some('}'), value_line, depth + 1)?)
                }
                Some(Tok::Punct('<')) => {
                    self.pos += 1;
                    FieldValue::Message(self.message(Some('>'), value_line, depth + 1)?)
                }
                Some(Tok::Punct('[')) => {
                    self.pos += 1;
                    self.list(&name, value_line, depth + 1)?
                }
                Some(Tok::Word(_) | Tok::Str(_)) if colon => self.scalar(),
                Some(Tok::Word(_) | Tok::Str(_)) => {
                    return Err((line, format!("expected ':' after the field name {name}")))
                }
                _ => {
                    return Err((
                        value_line,
                        format!(
                            "expected a value for {name}, found {}",
                            describe(self.peek())
                        ),
                    ))
                }
            };
            fields.push(Field { name, line, value });
            if !self.eat(',') {
                self.eat(';');
            }
        }
    }

    fn scalar(&mut self) -> FieldValue {
        match self.next().map(|t| t.tok.clone()) {
            Some(Tok::Str(mut s)) => {
                // Adjacent strings are one string, as in C.
                while let Some(Tok::Str(more)) = self.peek().map(|t| &t.tok) {
                    s.push_str(more);
                    self.pos += 1;
                }
                FieldValue::Scalar {
                    text: s,
                    quoted: true,
                }
            }
            Some(Tok::Word(w)) => FieldValue::Scalar {
                text: w,
                quoted: false,
            },
            _ => unreachable!("scalar() is called on a word or a string"),
        }
    }

    /// The items of a list, after its `[`.
    fn list(&mut self, name: &str, opened: usize, depth: usize) -> Result<FieldValue, Located> {
        let mut items = Vec::new();
        if self.eat(']') {
            return Ok(FieldValue::List(items));
        }
        loop {
            let line = self.line();
            let item = match self.peek().map(|t| t.tok.clone()) {
                Some(Tok::Punct('{')) => {
                    self.pos += 1;
                    FieldValue::Message(self.message(Some('}'), line, depth + 1)?)
                }
                Some(Tok::Punct('<')) => {
                    self.pos += 1;
                    FieldValue::Message(self.message(Some('>'), line, depth + 1)?)
                }
                Some(Tok::Word(_) | Tok::Str(_)) => self.scalar(),
                _ => {
                    return Err((
                        line,
                        format!(
                            "expected a value of the list {name} opened on line {opened}, found {}",
                            describe(self.peek())
                        ),
                    ))
                }
            };
            items.push(item);
            if self.eat(',') {
                continue;
            }
            if self.eat(']') {
                return Ok(FieldValue::List(items));
            }
            return Err((
                self.line(),
                format!(
                    "expected ',' or ']' in the list {name} opened on line {opened}, found {}",
                    describe(self.peek())
                ),
            ));
        }
    }
}
