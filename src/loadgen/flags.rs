//! The `--flag value` arguments every `loadgen` command reads.

use std::str::FromStr;

/// A command's arguments, read one flag at a time.
pub struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    pub fn new(args: &'a [String]) -> Flags<'a> {
        Flags { args: args.iter() }
    }

    /// The next flag; None after the last.
    pub fn next_flag(&mut self) -> Option<&'a str> {
        self.args.next().map(String::as_str)
    }

    /// The value after `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.args
            .next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    /// The value after `flag`, read as a `T` (a number, a pid, an address).
    pub fn parsed<T: FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let value = self.value(flag)?;
        value
            .trim()
            .parse()
            .map_err(|_| format!("{flag}: cannot read {value:?}"))
    }

    /// The value after `flag`, a whole number of seconds.
    pub fn seconds(&mut self, flag: &str) -> Result<std::time::Duration, String> {
        self.parsed(flag).map(std::time::Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn flags_and_values_alternate() {
        let list = args(&["--url", "http://x", "--users", " 12 ", "--duration", "3"]);
        let mut flags = Flags::new(&list);
        assert_eq!(flags.next_flag(), Some("--url"));
        assert_eq!(flags.value("--url").unwrap(), "http://x");
        assert_eq!(flags.next_flag(), Some("--users"));
        assert_eq!(flags.parsed::<usize>("--users").unwrap(), 12);
        assert_eq!(flags.next_flag(), Some("--duration"));
        assert_eq!(
            flags.seconds("--duration").unwrap(),
            std::time::Duration::from_secs(3)
        );
        assert_eq!(flags.next_flag(), None);
    }

    #[test]
    fn a_missing_or_unreadable_value_names_its_flag() {
        let list = args(&["--users", "many", "--rate"]);
        let mut flags = Flags::new(&list);
        flags.next_flag();
        assert_eq!(
            flags.parsed::<usize>("--users").unwrap_err(),
            "--users: cannot read \"many\""
        );
        flags.next_flag();
        assert_eq!(
            flags.parsed::<u64>("--rate").unwrap_err(),
            "--rate needs a value"
        );
    }
}
