//! A TCP proxy on 127.0.0.1:0 in front of a real server (etcd, an SMTP server) that a test
//! can cut, to break a connection the way a network does, and hold: connections it
//! accepts wait silent (a client waits for etcd's answer or the SMTP greeting) until the
//! proxy opens again, then go through.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards every connection.
    Open,
    /// Accepts connections and holds them silent, forwarding nothing, until opened.
    Hold,
    /// Accepts connections and closes them at once (a server that went away).
    Refuse,
}

#[derive(Clone, Copy)]
struct State {
    mode: Mode,
    /// How many times the proxy was cut: a forwarded connection ends when this changes.
    cuts: u64,
}

/// A running proxy; dropping it stops accepting (connections already forwarded go on).
pub struct Proxy {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    accepted: watch::Receiver<usize>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `to`, in `mode`.
    pub async fn start(to: SocketAddr, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().unwrap();
        let (state, states) = watch::channel(State { mode, cuts: 0 });
        let (count, accepted) = watch::channel(0usize);
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.send_modify(|n| *n += 1);
                tokio::spawn(forward(client, to, states.clone()));
            }
        });
        Self {
            addr,
            state,
            accepted,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection it forwards and holds the new ones, as a network that
    /// went away: clients see their connections end, and cannot make new ones.
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Hold;
            s.cuts += 1;
        });
    }

    /// Holds new connections, leaving the ones forwarded now alone.
    pub fn hold(&self) {
        self.state.send_modify(|s| s.mode = Mode::Hold);
    }

    /// Closes the connections it accepts from now on, at once (and the held ones).
    pub fn refuse(&self) {
        self.state.send_modify(|s| s.mode = Mode::Refuse);
    }

    /// Forwards again, the held connections first.
    pub fn open(&self) {
        self.state.send_modify(|s| s.mode = Mode::Open);
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Waits (10 s at most) until it accepted `n` connections in all.
    pub async fn wait_for_accepted(&self, n: usize) {
        let mut accepted = self.accepted.clone();
        super::within(
            std::time::Duration::from_secs(10),
            &format!("{n} connections at the proxy"),
            accepted.wait_for(|a| *a >= n),
        )
        .await
        .expect("the proxy is running");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Holds `client` while the proxy holds, then forwards it to `to` until the proxy is cut
/// (or closes it, if the proxy refuses).
async fn forward(mut client: TcpStream, to: SocketAddr, mut states: watch::Receiver<State>) {
    let Ok(state) = states.wait_for(|s| s.mode != Mode::Hold).await.map(|s| *s) else {
        return;
    };
    if state.mode == Mode::Refuse {
        return;
    }
    let Ok(mut server) = TcpStream::connect(to).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = states.wait_for(|s| s.cuts != state.cuts) => {}
    }
    // Both ends are dropped here: each side sees its connection end.
}
