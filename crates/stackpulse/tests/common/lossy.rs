//! A proxy that loses answers, for tests of calls whose outcome is unknown.

/// A TCP proxy in front of a server that, while armed, lets requests through but
/// drops the next answer and breaks that connection: a command the server executed
/// whose reply the caller never gets.
pub struct LossyProxy {
    pub port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    pub async fn start(upstream: u16) -> LossyProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let armed = std::sync::Arc::new(AtomicBool::new(false));
        let flag = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let flag = flag.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if flag.swap(false, Ordering::SeqCst) {
                            break; // the answer is lost with the connection
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        LossyProxy { port, armed }
    }

    /// The next answer from the server, on any connection, is lost.
    pub fn lose_next_answer(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
