//! A scripted SMTP server for the failure paths a real sink will not produce on demand:
//! 4xx and 5xx replies, and a server that accepts the connection and never answers.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
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
}

pub struct FakeSmtp {
    pub port: u16,
    /// Messages taken (the DATA of each).
    pub received: Arc<Mutex<Vec<String>>>,
    /// `RCPT TO` commands seen, accepted or not.
    pub recipients_seen: Arc<AtomicUsize>,
    /// Most messages in their DATA phase at the same time.
    pub peak_in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSmtp {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let recipients_seen = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak_in_flight = Arc::new(AtomicUsize::new(0));
        let task = {
            let received = received.clone();
            let recipients_seen = recipients_seen.clone();
            let counters = (in_flight.clone(), peak_in_flight.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let behaviour = behaviour.clone();
                    let received = received.clone();
                    let recipients_seen = recipients_seen.clone();
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        let _ =
                            session(socket, behaviour, received, recipients_seen, counters).await;
                    });
                }
            })
        };
        FakeSmtp {
            port,
            received,
            recipients_seen,
            peak_in_flight,
            task,
        }
    }

    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(
    socket: TcpStream,
    behaviour: Behaviour,
    received: Arc<Mutex<Vec<String>>>,
    recipients_seen: Arc<AtomicUsize>,
    (in_flight, peak): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) -> std::io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    if let Behaviour::Silent = behaviour {
        // Hold the connection open without a greeting until the client gives up.
        while lines.next_line().await?.is_some() {}
        return Ok(());
    }
    writer.write_all(b"220 fake.smtp ESMTP ready\r\n").await?;
    while let Some(line) = lines.next_line().await? {
        let command = line.to_ascii_uppercase();
        let reply: String = if command.starts_with("EHLO") {
            "250-fake.smtp\r\n250 8BITMIME".into()
        } else if command.starts_with("HELO")
            || command.starts_with("MAIL FROM")
            || command.starts_with("RSET")
            || command.starts_with("NOOP")
        {
            "250 OK".into()
        } else if command.starts_with("RCPT TO") {
            let seen = recipients_seen.fetch_add(1, Ordering::SeqCst);
            match &behaviour {
                Behaviour::RejectRecipient(reply) => reply.clone(),
                Behaviour::RejectFirst(n, reply) if seen < *n => reply.clone(),
                _ => "250 OK".into(),
            }
        } else if command == "DATA" {
            writer
                .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(&line);
                data.push('\n');
            }
            if let Behaviour::Slow(delay) = &behaviour {
                tokio::time::sleep(*delay).await;
            }
            received.lock().unwrap().push(data);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            "250 2.0.0 queued as fake".into()
        } else if command.starts_with("QUIT") {
            writer.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented".into()
        };
        writer.write_all(reply.as_bytes()).await?;
        writer.write_all(b"\r\n").await?;
    }
    Ok(())
}
