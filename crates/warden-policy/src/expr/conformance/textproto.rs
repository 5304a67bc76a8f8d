//! A small reader for protobuf text format, as much of it as the CEL conformance files use:
//! nested messages (`name { … }` or `name: { … }`), scalars (quoted strings with C escapes,
//! adjacent strings concatenated, numbers, identifiers), `[a, b]` lists and `[type.url]`
//! extension names. Test-only: it reads trusted files and reports the first problem.

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field {
    /// A quoted string, as raw bytes (escapes may produce any byte).
    Bytes(Vec<u8>),
    /// An unquoted token: a number, `true`, an enum name.
    Word(String),
    Message(Message),
}

/// A message: its fields in file order (a repeated field appears once per value).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Message(pub Vec<(String, Field)>);

impl Message {
    pub(crate) fn get(&self, name: &str) -> Option<&Field> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub(crate) fn message(&self, name: &str) -> Option<&Message> {
        match self.get(name) {
            Some(Field::Message(m)) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Field::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(Field::Word(w)) => Some(w.clone()),
            _ => None,
        }
    }
}

struct Reader<'a> {
    src: &'a [u8],
    at: usize,
}

pub(crate) fn parse(source: &str) -> Result<Message, String> {
    let mut r = Reader {
        src: source.as_bytes(),
        at: 0,
    };
    let m = r.message(None)?;
    Ok(m)
}

impl Reader<'_> {
    fn skip(&mut self) {
        while self.at < self.src.len() {
            match self.src[self.at] {
                b' ' | b'\t' | b'\n' | b'\r' | b',' | b';' => self.at += 1,
                b'#' => {
                    while self.at < self.src.len() && self.src[self.at] != b'\n' {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.src.get(self.at).copied()
    }

    fn error(&self, what: &str) -> String {
        let line = self.src[..self.at.min(self.src.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        format!("line {line}: {what}")
    }

    fn message(&mut self, close: Option<u8>) -> Result<Message, String> {
        let mut fields = Vec::new();
        loop {
            match self.peek() {
                None if close.is_none() => return Ok(Message(fields)),
                None => return Err(self.error("unexpected end of file")),
                Some(c) if Some(c) == close => {
                    self.at += 1;
                    return Ok(Message(fields));
                }
                Some(_) => {}
            }
            let name = self.name()?;
            let colon = self.peek() == Some(b':');
            if colon {
                self.at += 1;
            }
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    fields.push((name, Field::Message(self.message(Some(b'}'))?)));
                }
                Some(b'<') => {
                    self.at += 1;
                    fields.push((name, Field::Message(self.message(Some(b'>'))?)));
                }
                Some(b'[') if colon => {
                    self.at += 1;
                    while self.peek() != Some(b']') {
                        let value = match self.peek() {
                            Some(b'{') => {
                                self.at += 1;
                                Field::Message(self.message(Some(b'}'))?)
                            }
                            _ => self.scalar()?,
                        };
                        fields.push((name.clone(), value));
                    }
                    self.at += 1;
                }
                _ if colon => fields.push((name, self.scalar()?)),
                _ => return Err(self.error("expected `:` or `{`")),
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        if self.peek() == Some(b'[') {
            // An extension or Any type URL: `[type.googleapis.com/google.protobuf.Duration]`.
            let start = self.at;
            while self.at < self.src.len() && self.src[self.at] != b']' {
                self.at += 1;
            }
            self.at += 1;
            return Ok(String::from_utf8_lossy(&self.src[start..self.at]).into_owned());
        }
        let word = self.word();
        if word.is_empty() {
            return Err(self.error("expected a field name"));
        }
        Ok(word)
    }

    fn word(&mut self) -> String {
        self.skip();
        let start = self.at;
        while self.at < self.src.len()
            && (self.src[self.at].is_ascii_alphanumeric()
                || matches!(self.src[self.at], b'_' | b'.' | b'-' | b'+'))
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.src[start..self.at]).into_owned()
    }

    fn scalar(&mut self) -> Result<Field, String> {
        match self.peek() {
            Some(b'"' | b'\'') => {
                let mut bytes = Vec::new();
                // Adjacent strings concatenate, as in C.
                while let Some(q @ (b'"' | b'\'')) = self.peek() {
                    self.at += 1;
                    self.string(q, &mut bytes)?;
                }
                Ok(Field::Bytes(bytes))
            }
            _ => {
                let w = self.word();
                if w.is_empty() {
                    Err(self.error("expected a value"))
                } else {
                    Ok(Field::Word(w))
                }
            }
        }
    }

    fn string(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), String> {
        loop {
            let Some(&c) = self.src.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            if c == quote {
                return Ok(());
            }
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let Some(&e) = self.src.get(self.at) else {
                return Err(self.error("unterminated escape"));
            };
            self.at += 1;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'x' | b'X' => {
                    let mut n = 0u32;
                    let mut digits = 0;
                    while digits < 2 && self.src.get(self.at).is_some_and(|b| b.is_ascii_hexdigit())
                    {
                        n = n * 16 + (self.src[self.at] as char).to_digit(16).unwrap_or(0);
                        self.at += 1;
                        digits += 1;
                    }
                    out.push(n as u8);
                }
                b'0'..=b'7' => {
                    let mut n = u32::from(e - b'0');
                    let mut digits = 1;
                    while digits < 3
                        && self
                            .src
                            .get(self.at)
                            .is_some_and(|b| (b'0'..=b'7').contains(b))
                    {
                        n = n * 8 + u32::from(self.src[self.at] - b'0');
                        self.at += 1;
                        digits += 1;
                    }
                    out.push(n as u8);
                }
                b'u' | b'U' => {
                    let len = if e == b'u' { 4 } else { 8 };
                    let hex = std::str::from_utf8(&self.src[self.at..self.at + len])
                        .map_err(|_| self.error("bad \\u escape"))?;
                    let c = u32::from_str_radix(hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| self.error("bad \\u escape"))?;
                    self.at += len;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_the_conformance_files_use() {
        let m = parse(
            "# comment\nname: \"basic\"\nsection {\n  test {\n    expr: 'a' \"b\\x41\\101\"\n    value: { int64_value: -3 }\n    list: [1, 2]\n  }\n}\n",
        )
        .unwrap();
        assert_eq!(m.text("name").as_deref(), Some("basic"));
        let test = m.message("section").unwrap().message("test").unwrap();
        assert_eq!(test.text("expr").as_deref(), Some("abAA"));
        assert_eq!(
            test.message("value")
                .unwrap()
                .text("int64_value")
                .as_deref(),
            Some("-3")
        );
        assert_eq!(test.all("list").count(), 2);
    }
}
