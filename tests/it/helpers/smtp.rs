//! A scripted SMTP server for what a real sink will not do on demand: 4xx and 5xx
//! replies, silence, slowness, and TLS (implicit, or STARTTLS) with a certificate the
//! test chooses.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

/// How the server answers the recipient.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Takes every message.
    Accept,
    /// Answers `RCPT TO` with this reply, e.g. `451 4.3.0 try again later`.
    RejectRecipient(String),
    /// Answers `RCPT TO` with the first reply for the first `n` messages, then accepts.
    RejectFirst(usize, String),
    /// Accepts connections and never says a word.
    Silent,
    /// Takes every message, but answers the end of DATA only after this long.
    Slow(std::time::Duration),
    /// Answers `RCPT TO` of an address containing the text with the reply; takes the
    /// others.
    RejectSome(String, String),
}

/// One message as the server took it: its envelope and its bytes (CRLF kept, dots
/// unstuffed), for a MIME parser.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub mail_from: String,
    /// The recipients the server accepted.
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// When the end of its DATA arrived.
    pub at: std::time::Instant,
}

/// Transport security the server offers.
#[derive(Clone)]
pub enum Security {
    Plain,
    /// Plain first, `STARTTLS` offered in the EHLO reply.
    StartTls(TlsAcceptor),
    /// TLS from the first byte (SMTPS).
    Tls(TlsAcceptor),
}

impl Security {
    /// A TLS acceptor presenting `server.crt`/`server.key` from a certificate directory.
    pub fn acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// What the server saw, shared by its sessions.
#[derive(Default)]
struct Seen {
    received: Mutex<Vec<String>>,
    deliveries: Mutex<Vec<Delivery>>,
    recipients: AtomicUsize,
    sessions: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    tls_sessions: AtomicUsize,
}

pub struct FakeSmtp {
    pub port: u16,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
    /// Every session's task, so `stop` can drop their connections too.
    sessions: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FakeSmtp {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_with(behaviour, Security::Plain).await
    }

    pub async fn start_with(behaviour: Behaviour, security: Security) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, behaviour, security)
    }

    /// A server on `port`, e.g. the port of one that was stopped: a relay coming back.
    pub async fn start_on(port: u16, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        Self::serve(listener, behaviour, Security::Plain)
    }

    /// Stops listening and drops every open connection, as a relay that dies does.
    pub fn stop(&self) {
        self.task.abort();
        for session in self.sessions.lock().unwrap().drain(..) {
            session.abort();
        }
    }

    fn serve(listener: TcpListener, behaviour: Behaviour, security: Security) -> Self {
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let sessions: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    seen.sessions.fetch_add(1, Ordering::SeqCst);
                    // As a real server answers: a reply is not held back waiting for the
                    // ACK of the one before (Nagle against the client's delayed ACK would
                    // add 40 ms to a send, which is not what these tests measure).
                    let _ = socket.set_nodelay(true);
                    let (behaviour, security, seen) =
                        (behaviour.clone(), security.clone(), seen.clone());
                    let handle = tokio::spawn(async move {
                        let _ = session(socket, &behaviour, security, &seen).await;
                    });
                    sessions.lock().unwrap().push(handle.abort_handle());
                }
            })
        };
        FakeSmtp {
            port,
            seen,
            task,
            sessions,
        }
    }

    /// Messages taken (the DATA of each).
    pub fn received(&self) -> Vec<String> {
        self.seen.received.lock().unwrap().clone()
    }

    /// Messages taken, with their envelopes and raw bytes.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.seen.deliveries.lock().unwrap().clone()
    }

    /// The message taken for `address`, waited for up to 20 s.
    pub async fn delivery_to(&self, address: &str) -> Delivery {
        super::wait_for(
            std::time::Duration::from_secs(20),
            "the message is delivered",
            || async {
                self.deliveries()
                    .into_iter()
                    .find(|d| d.rcpt_to.iter().any(|r| r == address))
            },
        )
        .await
    }

    /// `RCPT TO` commands seen, accepted or not.
    pub fn recipients_seen(&self) -> usize {
        self.seen.recipients.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn sessions(&self) -> usize {
        self.seen.sessions.load(Ordering::SeqCst)
    }

    /// Most messages in their DATA phase at the same time.
    pub fn peak_in_flight(&self) -> usize {
        self.seen.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Sessions that completed a TLS handshake.
    pub fn tls_sessions(&self) -> usize {
        self.seen.tls_sessions.load(Ordering::SeqCst)
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a run of commands ended.
enum Next {
    Done,
    StartTls,
}

async fn session(
    socket: TcpStream,
    behaviour: &Behaviour,
    security: Security,
    seen: &Seen,
) -> std::io::Result<()> {
    if let Behaviour::Silent = behaviour {
        // Hold the connection open without a greeting until the client gives up.
        let mut lines = BufReader::new(socket).lines();
        while lines.next_line().await?.is_some() {}
        return Ok(());
    }
    match security {
        Security::Plain => {
            commands(BufReader::new(socket), behaviour, None, seen, true).await?;
        }
        Security::Tls(acceptor) => {
            let tls = acceptor.accept(socket).await?;
            seen.tls_sessions.fetch_add(1, Ordering::SeqCst);
            commands(BufReader::new(tls), behaviour, None, seen, true).await?;
        }
        Security::StartTls(acceptor) => {
            let mut plain = BufReader::new(socket);
            if let Next::StartTls = commands(&mut plain, behaviour, Some(()), seen, true).await? {
                let tls = acceptor.accept(plain.into_inner()).await?;
                seen.tls_sessions.fetch_add(1, Ordering::SeqCst);
                commands(BufReader::new(tls), behaviour, None, seen, false).await?;
            }
        }
    }
    Ok(())
}

/// Answers commands until QUIT, the end of the connection, or (when `starttls` is
/// offered) STARTTLS.
async fn commands<S>(
    mut stream: S,
    behaviour: &Behaviour,
    starttls: Option<()>,
    seen: &Seen,
    greet: bool,
) -> std::io::Result<Next>
where
    S: AsyncBufReadExt + AsyncWrite + AsyncRead + Unpin,
{
    if greet {
        stream.write_all(b"220 fake.smtp ESMTP ready\r\n").await?;
    }
    let mut line = String::new();
    let (mut mail_from, mut rcpt_to) = (String::new(), Vec::new());
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(Next::Done);
        }
        let command = line.trim_end().to_ascii_uppercase();
        // The path of MAIL FROM:<a> or RCPT TO:<a>.
        let path = || {
            let raw = line.trim_end();
            let start = raw.find('<').map_or(0, |i| i + 1);
            let end = raw.rfind('>').unwrap_or(raw.len());
            raw.get(start..end).unwrap_or_default().to_owned()
        };
        let reply: String = if command.starts_with("EHLO") {
            match starttls {
                Some(()) => "250-fake.smtp\r\n250-STARTTLS\r\n250 8BITMIME".into(),
                None => "250-fake.smtp\r\n250 8BITMIME".into(),
            }
        } else if command == "STARTTLS" && starttls.is_some() {
            stream
                .write_all(b"220 2.0.0 ready to start TLS\r\n")
                .await?;
            stream.flush().await?;
            return Ok(Next::StartTls);
        } else if command.starts_with("MAIL FROM") {
            mail_from = path();
            rcpt_to.clear();
            "250 OK".into()
        } else if command.starts_with("RSET") {
            rcpt_to.clear();
            "250 OK".into()
        } else if ["HELO", "NOOP"].iter().any(|c| command.starts_with(c)) {
            "250 OK".into()
        } else if command.starts_with("RCPT TO") {
            let before = seen.recipients.fetch_add(1, Ordering::SeqCst);
            let reply = match behaviour {
                Behaviour::RejectRecipient(reply) => reply.clone(),
                Behaviour::RejectFirst(n, reply) if before < *n => reply.clone(),
                Behaviour::RejectSome(needle, reply) if path().contains(needle.as_str()) => {
                    reply.clone()
                }
                _ => "250 OK".into(),
            };
            if reply.starts_with('2') {
                rcpt_to.push(path());
            }
            reply
        } else if command == "DATA" {
            stream
                .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            seen.peak_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut data = String::new();
            let mut raw = Vec::new();
            loop {
                line.clear();
                if stream.read_line(&mut line).await? == 0 {
                    return Ok(Next::Done);
                }
                if line.trim_end() == "." {
                    break;
                }
                data.push_str(line.trim_end_matches(['\r', '\n']));
                data.push('\n');
                raw.extend_from_slice(line.strip_prefix('.').unwrap_or(&line).as_bytes());
            }
            if let Behaviour::Slow(delay) = behaviour {
                tokio::time::sleep(*delay).await;
            }
            seen.received.lock().unwrap().push(data);
            seen.deliveries.lock().unwrap().push(Delivery {
                mail_from: mail_from.clone(),
                rcpt_to: std::mem::take(&mut rcpt_to),
                data: raw,
                at: std::time::Instant::now(),
            });
            seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            "250 2.0.0 queued as fake".into()
        } else if command.starts_with("QUIT") {
            stream.write_all(b"221 bye\r\n").await?;
            return Ok(Next::Done);
        } else {
            "502 command not implemented".into()
        };
        stream.write_all(reply.as_bytes()).await?;
        stream.write_all(b"\r\n").await?;
        stream.flush().await?;
    }
}

/// An entry of `smtp.relays` for a fake server on `port`, every optional key left to
/// its `smtp.*` default.
pub fn relay_entry(name: &str, port: u16) -> mailroom::config::RelayEntry {
    mailroom::config::RelayEntry {
        name: name.to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        security: None,
        verify_certificates: None,
        ca_file: None,
        username: None,
        password: None,
        hello_name: None,
        pool_max_size: None,
        max_per_second: None,
        priority: None,
        lane: None,
    }
}
