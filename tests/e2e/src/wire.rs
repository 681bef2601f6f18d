//! Bytes on the wire, written by hand: the PROXY protocol header that tells Envoy which
//! source and destination to report, raw HTTP/1.1 requests over plaintext or rustls, the TCP
//! echo probe, a tiny TCP echo server (the upstream of Envoy's `tcp_proxy`), and plain HTTP GETs
//! for the admin endpoints of Envoy and meshauthz.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// How long a probe waits for a connect, a handshake or an answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// PROXY protocol v1 header (`PROXY TCP4 <src> <dst> <sport> <dport>\r\n`). Both addresses must
/// be of one family.
pub fn proxy_v1(src: SocketAddr, dst: SocketAddr) -> Result<String> {
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => bail!("PROXY protocol needs both addresses in one family: {src} -> {dst}"),
    };
    Ok(format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    ))
}

/// Client side TLS for one connection: the config (CA + client certificate) and the name to
/// send as SNI (`ServerName::IpAddress` sends none).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// One connection to an Envoy listener.
#[derive(Clone, Debug)]
pub struct Conn {
    pub listener: SocketAddr,
    /// `(source, destination)` announced in a PROXY header; `None` sends no header.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
    pub tls: Option<ClientTls>,
}

/// A plaintext or TLS client stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Connects, sends the PROXY header and completes the TLS handshake (if any).
pub fn connect(conn: &Conn) -> Result<Stream> {
    let mut tcp = TcpStream::connect_timeout(&conn.listener, IO_TIMEOUT)
        .with_context(|| format!("connecting to {}", conn.listener))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    if let Some((src, dst)) = conn.proxy {
        tcp.write_all(proxy_v1(src, dst)?.as_bytes())?;
    }
    match &conn.tls {
        None => Ok(Stream::Plain(tcp)),
        Some(tls) => {
            let mut client = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                .context("starting the TLS client")?;
            while client.is_handshaking() {
                client
                    .complete_io(&mut tcp)
                    .context("TLS handshake with Envoy")?;
            }
            Ok(Stream::Tls(Box::new(StreamOwned::new(client, tcp))))
        }
    }
}

/// An HTTP/1.1 request, written exactly as given (no normalization, no encoding).
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    /// In order; a repeated header is several entries.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    pub fn get(path: &str, host: &str) -> Self {
        HttpRequest {
            method: "GET".to_string(),
            path: path.to_string(),
            host: host.to_string(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The request head, `Connection: close` included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, self.path, self.host
        );
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("Connection: close\r\n\r\n");
        s.into_bytes()
    }
}

/// Status, headers and body of an HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on a new connection and reads the response.
pub fn send_http(conn: &Conn, req: &HttpRequest) -> Result<HttpResponse> {
    let mut stream = connect(conn)?;
    stream
        .write_all(&req.to_bytes())
        .context("writing the request")?;
    stream.flush()?;
    read_response(&mut stream, req.method.eq_ignore_ascii_case("HEAD"))
}

/// Reads a response: the head, then a `content-length` body (none for HEAD), or whatever
/// arrives until the connection closes.
pub fn read_response(stream: &mut impl Read, head_only: bool) -> Result<HttpResponse> {
    let (mut resp, mut rest) = read_head(stream)?;
    if head_only {
        return Ok(resp);
    }
    let length = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let mut chunk = [0u8; 4096];
    while length.is_none_or(|n| rest.len() < n) && rest.len() < 1024 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
    if let Some(n) = length {
        rest.truncate(n);
    }
    resp.body = String::from_utf8_lossy(&rest).into_owned();
    Ok(resp)
}

/// Reads up to the end of the response headers and parses them; also returns the bytes read
/// past the head.
pub fn read_head(stream: &mut impl Read) -> Result<(HttpResponse, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if buf.is_empty() => return Err(e).context("reading the response"),
            Err(e) => bail!(
                "reading the response after {:?}: {e}",
                String::from_utf8_lossy(&buf)
            ),
        };
        if n == 0 {
            bail!(
                "connection closed before a complete response head (got {:?})",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    Ok((
        HttpResponse {
            status,
            headers,
            body: String::new(),
        },
        rest,
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What became of a TCP connection through Envoy's network ext_authz.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// A byte went to the upstream echo server and came back: the connection was allowed.
    Open,
    /// Envoy closed (or reset) the connection.
    Closed(String),
}

/// Sends one byte and waits for its echo.
pub fn tcp_roundtrip(conn: &Conn) -> Result<TcpOutcome> {
    let mut stream = match connect(conn) {
        Ok(s) => s,
        Err(e) => return Ok(TcpOutcome::Closed(format!("{e:#}"))),
    };
    if let Err(e) = stream.write_all(b"m").and_then(|()| stream.flush()) {
        return Ok(TcpOutcome::Closed(format!("write: {e}")));
    }
    let mut b = [0u8; 1];
    match stream.read(&mut b) {
        Ok(1) if b[0] == b'm' => Ok(TcpOutcome::Open),
        Ok(0) => Ok(TcpOutcome::Closed("EOF".to_string())),
        Ok(_) => bail!("unexpected byte {:?} from the echo server", b[0]),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            bail!("neither an echo nor a close within {IO_TIMEOUT:?}")
        }
        Err(e) => Ok(TcpOutcome::Closed(e.to_string())),
    }
}

/// A process-wide TCP echo server on 127.0.0.1 (one thread per connection).
pub fn echo_server() -> Result<SocketAddr> {
    static ECHO: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    ECHO.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || echo(stream));
            }
        });
        Ok(addr)
    })
    .clone()
    .map_err(|e| anyhow!("echo server: {e}"))
}

fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Header of every answer of the upstream server, so a client can tell the upstream's 200
/// from anything Envoy answered itself.
pub const UPSTREAM_MARK: &str = "x-e2e-upstream";

/// A process-wide HTTP/1.1 upstream on 127.0.0.1 (the "workload" behind Envoy): answers every
/// request with 200, `x-e2e-upstream: 1` and, as the body, the request head it received
/// (request line and header lines), so tests can see what Envoy forwarded.
pub fn upstream_server() -> Result<SocketAddr> {
    static UPSTREAM: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    UPSTREAM
        .get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    std::thread::spawn(move || upstream(stream));
                }
            });
            Ok(addr)
        })
        .clone()
        .map_err(|e| anyhow!("upstream server: {e}"))
}

/// Serves requests on one (keep-alive) connection until the peer closes it. Request bodies
/// are read by `content-length` and ignored.
fn upstream(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let body_len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + body_len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + body_len);
        let body = format!("{head}\r\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n{UPSTREAM_MARK}: 1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A plain HTTP/1.1 GET (admin endpoints): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("GET {path} from {addr}: bad response {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_header_v4_and_v6() {
        let h = proxy_v1(
            "10.0.0.9:40000".parse().unwrap(),
            "198.18.0.1:8080".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h, "PROXY TCP4 10.0.0.9 198.18.0.1 40000 8080\r\n");
        let h = proxy_v1(
            "[2001:db8::1]:1".parse().unwrap(),
            "[fd00::1]:80".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h, "PROXY TCP6 2001:db8::1 fd00::1 1 80\r\n");
        assert!(proxy_v1(
            "10.0.0.9:1".parse().unwrap(),
            "[fd00::1]:80".parse().unwrap()
        )
        .is_err());
    }

    #[test]
    fn request_bytes_keep_repeated_headers() {
        let r = HttpRequest::get("/a?b#", "h")
            .header("x-role", "user")
            .header("x-role", "admin");
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "GET /a?b# HTTP/1.1\r\nHost: h\r\nx-role: user\r\nx-role: admin\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_head_parsing_and_dechunk() {
        let mut r: &[u8] = b"HTTP/1.1 403 Forbidden\r\nX-A: b\r\ncontent-length: 2\r\n\r\nbody";
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 403);
        assert_eq!(resp.header("x-a"), Some("b"));
        assert_eq!(resp.body, "bo");
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
