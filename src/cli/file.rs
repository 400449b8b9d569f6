//! The flags file (`--flags-file`): the command line's language, one flag per line.
//!
//! Pure: text in, arguments out, each with the line it came from so an error can name it.
//! A line is a flag and its value exactly as typed on a command line (`--route
//! /socket.io/=127.0.0.1:3000`, or `--route=/socket.io/=…`), a flag alone (`--strict-sni`),
//! a `#` comment or blank. The value is the rest of the line, one argument (a repeatable
//! flag's value is then split at spaces, as on the command line and in `WSSBRIDGE_*`); a
//! value wholly in matching quotes loses them (`--acme-email "ops@example.com"`,
//! `--to="127.0.0.1:3000"`), and ` #` outside quotes starts a comment. No shell expansion:
//! `$HOME` is five characters.

use std::ffi::OsString;

/// One flag line: its number (from 1) and the arguments it stands for on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    /// The flag as written (`--route`), for messages.
    pub flag: String,
    pub args: Vec<OsString>,
}

/// Reads `text`'s flag lines; the first line that is not one is the error, with its number.
pub fn parse(text: &str) -> Result<Vec<Line>, (usize, String)> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        lines.push(parse_line(line).map_err(|e| (number, e))?.numbered(number));
    }
    Ok(lines)
}

impl Line {
    fn numbered(mut self, number: usize) -> Line {
        self.number = number;
        self
    }
}

fn parse_line(line: &str) -> Result<Line, String> {
    let (flag, value) = match line.split_once(char::is_whitespace) {
        Some((flag, value)) => (flag, value.trim()),
        None => (line, ""),
    };
    if !flag.starts_with('-') || flag == "-" || flag == "--" {
        return Err(format!(
            "'{line}' is not a flag: write one flag and its value per line, as on the \
             command line (--route /socket.io/=127.0.0.1:3000)"
        ));
    }
    let name = flag.split_once('=').map_or(flag, |(name, _)| name);
    if matches!(name, "--flags-file" | "--help" | "-h" | "--version" | "-V") {
        return Err(format!("{name} cannot be given in a flags file"));
    }
    if flag.contains('=') && !value.is_empty() {
        return Err(format!(
            "'{line}': {name}=VALUE takes no more after it: one flag per line"
        ));
    }
    let value = unquote(value);
    if value.starts_with("--") || value.contains(" --") {
        return Err(format!(
            "'{line}': one flag per line (the value of {name} is the rest of its line)"
        ));
    }
    let args = match flag.split_once('=') {
        Some((name, joined)) => vec![OsString::from(format!("{name}={}", unquote(joined)))],
        None if value.is_empty() => vec![OsString::from(flag)],
        None => vec![OsString::from(flag), OsString::from(value)],
    };
    Ok(Line {
        number: 0,
        flag: name.to_string(),
        args,
    })
}

/// The line up to a `#` that starts it or follows whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut after_space = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') if after_space => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        after_space = c.is_whitespace();
    }
    line
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(q)
            .and_then(|v| v.strip_suffix(q))
            .filter(|_| value.len() >= 2)
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<Vec<String>> {
        parse(text)
            .expect("parses")
            .into_iter()
            .map(|l| {
                l.args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_line_is_a_flag_and_the_rest_its_value() {
        let text = "# wssbridge\n\n--listen :443\n  --route /socket.io/=127.0.0.1:3000  # the app\n\
                    --strict-sni\n--to=\"127.0.0.1:8080\"\n--pid-file /run/my dir/wssbridge.pid\n\
                    --acme-email \"ops@example.com\"\n--admin-host 'a#b'\n";
        assert_eq!(
            args(text),
            vec![
                vec!["--listen", ":443"],
                vec!["--route", "/socket.io/=127.0.0.1:3000"],
                vec!["--strict-sni"],
                vec!["--to=127.0.0.1:8080"],
                vec!["--pid-file", "/run/my dir/wssbridge.pid"],
                vec!["--acme-email", "ops@example.com"],
                vec!["--admin-host", "a#b"],
            ]
        );
        let numbers: Vec<usize> = parse(text).unwrap().iter().map(|l| l.number).collect();
        assert_eq!(numbers, vec![3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn errors_name_the_line_and_say_what_to_write() {
        let (n, e) = parse("--listen :443\nroute /x=a:1\n").unwrap_err();
        assert_eq!(n, 2);
        assert!(
            e.contains("not a flag") && e.contains("--route /socket.io/"),
            "{e}"
        );
        let (n, e) = parse("\n\n--listen :443 --to 127.0.0.1:3000\n").unwrap_err();
        assert_eq!(n, 3);
        assert!(e.contains("one flag per line"), "{e}");
        let (_, e) = parse("--flags-file /etc/x\n").unwrap_err();
        assert!(e.contains("--flags-file cannot"), "{e}");
        let (_, e) = parse("--to=a:1 b:2\n").unwrap_err();
        assert!(e.contains("one flag per line"), "{e}");
    }
}
