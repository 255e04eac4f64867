//! Request parameters from the query string and a form body, repeated keys kept in order.

/// Decoded `key=value` pairs; form body values come before query-string values (as Go's
/// `Request.ParseForm` orders them).
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn from_query(q: &str) -> Params {
        Params(
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn prepend_form(&mut self, body: &[u8]) {
        let mut v: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        v.append(&mut self.0);
        self.0 = v;
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.Atoi` on a 64-bit platform, with its error text (Prometheus quotes it).
pub fn parse_go_int(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.Atoi: parsing {s:?}: invalid syntax"));
    }
    s.parse::<i64>()
        .map_err(|_| format!("strconv.Atoi: parsing {s:?}: value out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_form_merge() {
        let mut p = Params::from_query("query=up&match%5B%5D=a&match[]=b");
        p.prepend_form(b"query=rate(x%5B5m%5D)&time=1");
        assert_eq!(p.get("query"), Some("rate(x[5m])"));
        assert_eq!(p.get("time"), Some("1"));
        assert_eq!(p.get_all("match[]"), vec!["a", "b"]);
        assert_eq!(p.get("nope"), None);
    }

    #[test]
    fn go_ints() {
        assert_eq!(parse_go_int("12"), Ok(12));
        assert_eq!(parse_go_int("-3"), Ok(-3));
        assert_eq!(
            parse_go_int("abc"),
            Err("strconv.Atoi: parsing \"abc\": invalid syntax".into())
        );
        assert_eq!(
            parse_go_int("99999999999999999999"),
            Err("strconv.Atoi: parsing \"99999999999999999999\": value out of range".into())
        );
        assert!(parse_go_int("").is_err());
        assert!(parse_go_int("1.5").is_err());
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }
}
