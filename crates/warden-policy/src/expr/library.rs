//! The function library: conversions, `size`, the string and set extensions, `glob`, and
//! calendar accessors with a time zone computed at run time.
//!
//! Indices and lengths count Unicode code points, as CEL does. Error details name types,
//! never values: they reach the server log, and a value may be a secret.

use super::node::Func;
use super::time;
use super::value::{TWO_63, TWO_64, Val, equal, write_double};
use super::{EvalError, fail};
use std::borrow::Cow;
use std::rc::Rc;

fn arg<'v, 'a>(args: &'v [Val<'a>], i: usize) -> Result<&'v Val<'a>, EvalError> {
    args.get(i)
        .ok_or_else(|| EvalError("a function is missing an argument".into()))
}

fn text<'v>(args: &'v [Val<'_>], i: usize, what: &str) -> Result<&'v str, EvalError> {
    match arg(args, i)? {
        Val::Str(s) => Ok(s),
        other => fail(format!("{what} needs a string, not {}", other.type_name())),
    }
}

fn int(args: &[Val<'_>], i: usize, what: &str) -> Result<i64, EvalError> {
    match arg(args, i)?.clone().resolve() {
        Val::Int(n) => Ok(n),
        other => fail(format!("{what} needs an int, not {}", other.type_name())),
    }
}

fn owned<'a>(s: String) -> Val<'a> {
    Val::Str(Cow::Owned(s))
}

/// The byte offset of code point `i` in `s`, where `i` may equal the length.
fn char_offset(s: &str, i: i64, what: &str) -> Result<usize, EvalError> {
    let out = || EvalError(format!("{what}: index out of range"));
    let i = usize::try_from(i).map_err(|_| out())?;
    if i == 0 {
        return Ok(0);
    }
    match s.char_indices().nth(i) {
        Some((at, _)) => Ok(at),
        None if s.chars().count() == i => Ok(s.len()),
        None => Err(out()),
    }
}

fn code_points(s: &str, byte: usize) -> i64 {
    s[..byte].chars().count() as i64
}

fn elements<'a>(v: &Val<'a>, what: &str) -> Result<Vec<Val<'a>>, EvalError> {
    match v.list_len() {
        Some(n) => Ok((0..n).filter_map(|i| v.list_get(i)).collect()),
        None => fail(format!("{what} needs a list, not {}", v.type_name())),
    }
}

pub(super) fn call<'a>(f: Func, args: &[Val<'a>]) -> Result<Val<'a>, EvalError> {
    let x = arg(args, 0)?.clone().resolve();
    Ok(match f {
        Func::Size => match &x {
            Val::Str(s) => Val::Int(s.chars().count() as i64),
            Val::Bytes(b) => Val::Int(b.len() as i64),
            _ => match x.list_len().or_else(|| x.map_len()) {
                Some(n) => Val::Int(n as i64),
                None => return fail(format!("`size` is not defined for {}", x.type_name())),
            },
        },
        Func::Int => Val::Int(match &x {
            Val::Int(i) => *i,
            Val::UInt(u) => i64::try_from(*u).map_err(|_| EvalError("integer overflow".into()))?,
            // CEL truncates toward zero and refuses what an int cannot hold.
            Val::Double(d) if d.is_finite() && *d > -TWO_63 && *d < TWO_63 => d.trunc() as i64,
            Val::Double(_) => return fail("integer overflow"),
            // The detail reaches the server log: name the type, never the value.
            Val::Str(s) => s
                .parse()
                .map_err(|_| EvalError("a string that is not an int".into()))?,
            Val::Timestamp(t) => t.as_second(),
            _ => return fail(format!("cannot convert {} to int", x.type_name())),
        }),
        Func::UInt => Val::UInt(match &x {
            Val::UInt(u) => *u,
            Val::Int(i) => u64::try_from(*i).map_err(|_| EvalError("integer overflow".into()))?,
            Val::Double(d) if d.is_finite() && *d > -1.0 && *d < TWO_64 => d.trunc() as u64,
            Val::Double(_) => return fail("integer overflow"),
            Val::Str(s) => s
                .parse()
                .map_err(|_| EvalError("a string that is not a uint".into()))?,
            _ => return fail(format!("cannot convert {} to uint", x.type_name())),
        }),
        Func::Double => Val::Double(match &x {
            Val::Double(d) => *d,
            Val::Int(i) => *i as f64,
            Val::UInt(u) => *u as f64,
            Val::Str(s) => parse_double(s)?,
            _ => return fail(format!("cannot convert {} to double", x.type_name())),
        }),
        Func::String => match &x {
            Val::Str(_) => x,
            Val::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => owned(s.to_owned()),
                Err(_) => return fail("bytes that are not valid UTF-8"),
            },
            Val::Double(d) => {
                let mut out = String::new();
                write_double(*d, &mut out);
                owned(out)
            }
            Val::Int(_) | Val::UInt(_) | Val::Bool(_) | Val::Timestamp(_) | Val::Duration(_) => {
                let mut out = String::new();
                x.write_text(&mut out);
                owned(out)
            }
            _ => return fail(format!("cannot convert {} to string", x.type_name())),
        },
        Func::Bool => match &x {
            Val::Bool(_) => x,
            Val::Str(s) => Val::Bool(match s.as_ref() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                _ => return fail("a string that is not a bool"),
            }),
            _ => return fail(format!("cannot convert {} to bool", x.type_name())),
        },
        Func::Bytes => match x {
            Val::Bytes(_) => x,
            Val::Str(Cow::Borrowed(s)) => Val::Bytes(Cow::Borrowed(s.as_bytes())),
            Val::Str(Cow::Owned(s)) => Val::Bytes(Cow::Owned(s.into_bytes())),
            _ => return fail(format!("cannot convert {} to bytes", x.type_name())),
        },
        Func::Timestamp => match &x {
            Val::Timestamp(_) => x,
            Val::Str(s) => Val::Timestamp(time::parse_timestamp(s)?),
            Val::Int(i) => Val::Timestamp(time::timestamp_from_seconds(*i)?),
            _ => return fail(format!("cannot convert {} to timestamp", x.type_name())),
        },
        Func::Duration => match &x {
            Val::Duration(_) => x,
            Val::Str(s) => Val::Duration(time::parse_duration(s)?),
            _ => return fail(format!("cannot convert {} to duration", x.type_name())),
        },
        Func::Type => Val::Type(x.cel_type()),
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let (s, needle) = (
                text(args, 0, "the receiver")?,
                text(args, 1, "the argument")?,
            );
            Val::Bool(match f {
                Func::StartsWith => s.starts_with(needle),
                Func::EndsWith => s.ends_with(needle),
                _ => s.contains(needle),
            })
        }
        Func::LowerAscii => owned(text(args, 0, "`lowerAscii`")?.to_ascii_lowercase()),
        Func::UpperAscii => owned(text(args, 0, "`upperAscii`")?.to_ascii_uppercase()),
        Func::Trim => owned(text(args, 0, "`trim`")?.trim().to_owned()),
        Func::Reverse => owned(text(args, 0, "`reverse`")?.chars().rev().collect()),
        Func::CharAt => {
            let s = text(args, 0, "`charAt`")?;
            let at = char_offset(s, int(args, 1, "`charAt`")?, "`charAt`")?;
            owned(s[at..].chars().next().map(String::from).unwrap_or_default())
        }
        Func::IndexOf | Func::LastIndexOf => {
            let s = text(args, 0, "`indexOf`")?;
            let needle = text(args, 1, "`indexOf`")?;
            let last = f == Func::LastIndexOf;
            let found = if args.len() > 2 {
                let from = char_offset(s, int(args, 2, "`indexOf`")?, "`indexOf`")?;
                if last {
                    // The last match that starts at or before `from`.
                    s.match_indices(needle)
                        .map(|(at, _)| at)
                        .take_while(|at| *at <= from)
                        .last()
                } else {
                    s[from..].find(needle).map(|i| i + from)
                }
            } else if last {
                s.rfind(needle)
            } else {
                s.find(needle)
            };
            Val::Int(found.map_or(-1, |at| code_points(s, at)))
        }
        Func::Substring => {
            let s = text(args, 0, "`substring`")?;
            let start = char_offset(s, int(args, 1, "`substring`")?, "`substring`")?;
            let end = if args.len() > 2 {
                char_offset(s, int(args, 2, "`substring`")?, "`substring`")?
            } else {
                s.len()
            };
            if start > end {
                return fail("`substring`: the start is after the end");
            }
            owned(s[start..end].to_owned())
        }
        Func::Replace => {
            let s = text(args, 0, "`replace`")?;
            let (from, to) = (text(args, 1, "`replace`")?, text(args, 2, "`replace`")?);
            let n = if args.len() > 3 {
                int(args, 3, "`replace`")?
            } else {
                -1
            };
            owned(match usize::try_from(n) {
                Ok(n) => s.replacen(from, to, n),
                Err(_) => s.replace(from, to),
            })
        }
        Func::Split => {
            let s = text(args, 0, "`split`")?;
            let sep = text(args, 1, "`split`")?;
            let n = if args.len() > 2 {
                int(args, 2, "`split`")?
            } else {
                -1
            };
            let parts: Vec<Val<'a>> = match usize::try_from(n) {
                Ok(0) => Vec::new(),
                Ok(n) if sep.is_empty() => {
                    let mut parts: Vec<String> = s
                        .chars()
                        .take(n.saturating_sub(1))
                        .map(String::from)
                        .collect();
                    let used: usize = parts.iter().map(String::len).sum();
                    if used < s.len() {
                        parts.push(s[used..].to_owned());
                    }
                    parts.into_iter().map(owned).collect()
                }
                Ok(n) => s.splitn(n, sep).map(|p| owned(p.to_owned())).collect(),
                Err(_) if sep.is_empty() => s.chars().map(|c| owned(c.to_string())).collect(),
                Err(_) => s.split(sep).map(|p| owned(p.to_owned())).collect(),
            };
            Val::List(Rc::new(parts))
        }
        Func::Join => {
            let sep = if args.len() > 1 {
                text(args, 1, "`join`")?
            } else {
                ""
            };
            let mut out = String::new();
            for (i, item) in elements(&x, "`join`")?.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                match item {
                    Val::Str(s) => out.push_str(s),
                    other => {
                        return fail(format!("`join` needs strings, not {}", other.type_name()));
                    }
                }
            }
            owned(out)
        }
        Func::SetsContains | Func::SetsIntersects | Func::SetsEquivalent => {
            let a = elements(&x, "`sets`")?;
            let b = elements(arg(args, 1)?, "`sets`")?;
            let within =
                |xs: &[Val<'_>], ys: &[Val<'_>]| xs.iter().all(|x| ys.iter().any(|y| equal(x, y)));
            Val::Bool(match f {
                Func::SetsContains => within(&b, &a),
                Func::SetsIntersects => a.iter().any(|x| b.iter().any(|y| equal(x, y))),
                _ => within(&a, &b) && within(&b, &a),
            })
        }
        Func::Glob => Val::Bool(glob(text(args, 0, "`glob`")?, text(args, 1, "`glob`")?)?),
        Func::Time(part) => {
            let zone = text(args, 1, "a time zone")?;
            // The name is the policy author's or the input's; it is not secret, but keep
            // the detail free of input values like every other one.
            let tz = time::zone(zone).map_err(|_| EvalError("unknown time zone".into()))?;
            match &x {
                Val::Timestamp(t) => Val::Int(time::timestamp_part(*t, part, Some(&tz))),
                other => {
                    return fail(format!(
                        "a time accessor needs a timestamp, not {}",
                        other.type_name()
                    ));
                }
            }
        }
    })
}

fn parse_double(s: &str) -> Result<f64, EvalError> {
    let bad = || EvalError("a string that is not a number".into());
    match s {
        "NaN" => Ok(f64::NAN),
        "Infinity" | "+Infinity" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            s.parse().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// `glob(path, pattern)` over `/`-separated paths: `*` and `?` stay within a segment, `**`
/// spans any number of segments. The path is normalized first (`.` dropped, `..` removes the
/// segment before it), so `docs/../secrets/key` is `secrets/key`; a path that climbs above
/// its start cannot be placed and is an error (so a deny fails closed).
pub(super) fn glob(path: &str, pattern: &str) -> Result<bool, EvalError> {
    let absolute = path.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return fail("`glob`: the path climbs above its start with `..`");
                }
            }
            other => segments.push(other),
        }
    }
    if absolute != pattern.starts_with('/') {
        return Ok(false);
    }
    let pattern: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    // matches[i][j]: pattern[i..] matches segments[j..]. Linear in pattern × path, so a
    // hostile path cannot make the match exponential.
    let (p, s) = (pattern.len(), segments.len());
    let mut next = vec![false; s + 1];
    next[s] = true;
    for i in (0..p).rev() {
        let mut cur = vec![false; s + 1];
        for j in (0..=s).rev() {
            cur[j] = if pattern[i] == "**" {
                next[j] || (j < s && cur[j + 1])
            } else {
                j < s && segment_matches(pattern[i], segments[j]) && next[j + 1]
            };
        }
        next = cur;
    }
    Ok(next[0])
}

/// `*` (any run of characters) and `?` (one character) within one segment, iteratively with
/// one backtrack point, so it never recurses and stays quadratic at worst.
fn segment_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == '*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_normalizes_before_matching() {
        let table = [
            ("docs/a/b.md", "docs/**", true),
            ("docs/../secrets/key", "docs/**", false),
            ("docs/../secrets/key", "secrets/*", true),
            ("./docs/./a.md", "docs/*.md", true),
            ("docs/a/b.md", "docs/*.md", false),
            ("docs/a/b.md", "docs/**/*.md", true),
            ("docs/b.md", "docs/**/*.md", true),
            ("/etc/passwd", "/etc/*", true),
            ("etc/passwd", "/etc/*", false),
            ("src/main.rs", "src/ma?n.rs", true),
            ("a/b/c", "**", true),
            ("notes/é.md", "notes/?.md", true),
        ];
        for (path, pattern, expected) in table {
            assert_eq!(glob(path, pattern), Ok(expected), "{path} vs {pattern}");
        }
        assert!(glob("../etc/passwd", "**").is_err());
    }
}
