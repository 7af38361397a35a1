//! Reading our /metrics endpoints (tests and benchmarks): fetching them, with a token where the
//! agent asks for one, and reading the Prometheus text exposition.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr` (HTTP/1.1, one request per connection), with `Authorization: Bearer
/// <bearer>` when given: enough for /metrics, /healthz and /readyz.
pub fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> std::io::Result<Answer> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    get_with(addr, path, authorization.as_deref())
}

/// [`get`] with this `Authorization` header value, if any.
pub fn get_with(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// The value of the unlabelled sample `name`, if the text has it.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of `name`, whatever its labels; 0 when there is none.
pub fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\nx_total_extra 9\n\
                        y_total{error=\"a\"} 1\ny_total{error=\"b\"} 2\n# EOF\n";

    #[test]
    fn samples_are_read_by_exact_name_and_series_summed() {
        assert_eq!(sample(TEXT, "x_total"), Some(3.0));
        assert_eq!(sample(TEXT, "x"), None);
        assert_eq!(
            sample(TEXT, "y_total"),
            None,
            "labelled: not a plain sample"
        );
        assert_eq!(sum_of(TEXT, "y_total"), 3.0);
        assert_eq!(sum_of(TEXT, "x_total"), 3.0);
        assert_eq!(sum_of(TEXT, "z_total"), 0.0);
    }
}
