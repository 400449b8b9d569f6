//! `make demo`'s backend: a tiny WebSocket chat on plain ws:// and http://.
//!
//! `GET /` serves the chat page; a WebSocket upgrade on `/ws` joins the room, and every text
//! message is sent to everyone in it. It knows nothing of TLS: wssbridge in front makes it
//! https:// and wss://. Usage: `cargo run -p wssbridge-chat -- [ADDR]` (default 127.0.0.1:3000).

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

const PAGE: &str = include_str!("chat.html");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_string());
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "chat: cannot listen on {addr}: {e}. Something else holds that port: \
                 stop it, or run make demo DEMO_BACKEND=127.0.0.1:3001"
            );
            std::process::exit(1);
        }
    };
    println!("chat backend on http://{addr} (ws://{addr}/ws)");
    let (room, _) = broadcast::channel::<String>(256);
    loop {
        let (stream, _) = listener.accept().await?;
        let room = room.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, room).await {
                eprintln!("chat: {e}");
            }
        });
    }
}

async fn serve(mut stream: TcpStream, room: broadcast::Sender<String>) -> anyhow::Result<()> {
    // Peek at the head: an upgrade goes to the WebSocket handshake, anything else gets the page.
    let mut peeked = vec![0u8; 8192];
    let (end, head) = loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(end) = peeked[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                end,
                String::from_utf8_lossy(&peeked[..end]).to_ascii_lowercase(),
            );
        }
        if n == peeked.len() {
            anyhow::bail!("request head too large");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    if !head.contains("upgrade: websocket") {
        // Read the request it answers (peeking left it in the socket: closing with unread
        // bytes would send a reset, and the proxy would see the page aborted), answer, and
        // close in order.
        let mut request = vec![0u8; end + 4];
        stream.read_exact(&mut request).await?;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{PAGE}",
            PAGE.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut rest = [0u8; 1024];
        let drain = async { while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        return Ok(());
    }
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut tx, mut rx) = ws.split();
    let mut heard = room.subscribe();
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => { let _ = room.send(text.to_string()); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            said = heard.recv() => match said {
                Ok(text) => tx.send(Message::text(text)).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
