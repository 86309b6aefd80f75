//! The server side of the SOCKS handshake for dynamic forwards (`-D`):
//! SOCKS4, SOCKS4a and SOCKS5 with CONNECT and no authentication, as
//! OpenSSH's own `-D` supports. Generic over the stream so it is tested
//! without sockets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the SOCKS client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksTarget {
    pub host: String,
    pub port: u16,
    pub version: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("SOCKS version {0} is not supported (4, 4a and 5 are)")]
    Version(u8),
    #[error("SOCKS command {0} is not supported (only CONNECT)")]
    Command(u8),
    #[error("SOCKS5 client offers no method without authentication")]
    NoAcceptableMethod,
    #[error("SOCKS address type {0} is not supported")]
    AddressType(u8),
    #[error("SOCKS field too long")]
    TooLong,
    #[error("SOCKS host name is not valid UTF-8")]
    BadHost,
    #[error("i/o error during the SOCKS handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest user id or host name accepted in SOCKS4/4a (NUL-terminated).
const MAX_FIELD: usize = 255;

/// Reads a SOCKS request from `stream`. On an unsupported request the
/// matching failure reply is sent before the error is returned.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<SocksTarget, SocksError> {
    match stream.read_u8().await? {
        4 => socks4(stream).await,
        5 => socks5(stream).await,
        other => Err(SocksError::Version(other)),
    }
}

async fn socks4<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<SocksTarget, SocksError> {
    let command = stream.read_u8().await?;
    let port = stream.read_u16().await?;
    let mut ip = [0u8; 4];
    stream.read_exact(&mut ip).await?;
    let _user = read_nul_terminated(stream).await?;
    if command != 1 {
        stream.write_all(&socks4_reply(false)).await?;
        return Err(SocksError::Command(command));
    }
    // 0.0.0.x with x != 0 announces SOCKS4a: a host name follows.
    let host = if ip[..3] == [0, 0, 0] && ip[3] != 0 {
        String::from_utf8(read_nul_terminated(stream).await?).map_err(|_| SocksError::BadHost)?
    } else {
        std::net::Ipv4Addr::from(ip).to_string()
    };
    Ok(SocksTarget {
        host,
        port,
        version: 4,
    })
}

async fn read_nul_terminated<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, SocksError> {
    let mut field = Vec::new();
    loop {
        match stream.read_u8().await? {
            0 => return Ok(field),
            _ if field.len() >= MAX_FIELD => return Err(SocksError::TooLong),
            byte => field.push(byte),
        }
    }
}

async fn socks5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<SocksTarget, SocksError> {
    let count = stream.read_u8().await? as usize;
    let mut methods = vec![0u8; count];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        stream.write_all(&[5, 0xff]).await?;
        return Err(SocksError::NoAcceptableMethod);
    }
    stream.write_all(&[5, 0]).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(SocksError::Version(head[0]));
    }
    let host = match head[3] {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let len = stream.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name).map_err(|_| SocksError::BadHost)?
        }
        4 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            std::net::Ipv6Addr::from(ip).to_string()
        }
        other => {
            stream.write_all(&socks5_reply(8)).await?;
            return Err(SocksError::AddressType(other));
        }
    };
    let port = stream.read_u16().await?;
    if head[1] != 1 {
        stream.write_all(&socks5_reply(7)).await?;
        return Err(SocksError::Command(head[1]));
    }
    Ok(SocksTarget {
        host,
        port,
        version: 5,
    })
}

/// The reply to send once the upstream channel opened (or failed).
pub fn success_reply(version: u8, ok: bool) -> Vec<u8> {
    match version {
        4 => socks4_reply(ok).to_vec(),
        _ => socks5_reply(if ok { 0 } else { 5 }).to_vec(),
    }
}

fn socks4_reply(ok: bool) -> [u8; 8] {
    [0, if ok { 90 } else { 91 }, 0, 0, 0, 0, 0, 0]
}

fn socks5_reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(request: &[u8]) -> (Result<SocksTarget, SocksError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(request).await.unwrap();
        // The client sends nothing more: a short request must end, not wait.
        client.shutdown().await.unwrap();
        let result = accept(&mut server).await;
        drop(server);
        let mut replies = Vec::new();
        client.read_to_end(&mut replies).await.unwrap();
        (result, replies)
    }

    #[test]
    fn socks4_and_4a() {
        crate::test_support::runtime().block_on(async {
            let (target, _) = run(&[4, 1, 0, 80, 10, 1, 2, 3, b'u', 0]).await;
            assert_eq!(
                target.unwrap(),
                SocksTarget {
                    host: "10.1.2.3".into(),
                    port: 80,
                    version: 4
                }
            );
            let mut request = vec![4, 1, 0x1f, 0x90, 0, 0, 0, 1, 0];
            request.extend_from_slice(b"example.org\0");
            let (target, _) = run(&request).await;
            assert_eq!(target.unwrap().host, "example.org");
            let (target, reply) = run(&[4, 2, 0, 80, 10, 1, 2, 3, 0]).await;
            assert!(matches!(target, Err(SocksError::Command(2))));
            assert_eq!(reply[1], 91);
        });
    }

    #[test]
    fn socks5_domain_ipv4_ipv6() {
        crate::test_support::runtime().block_on(async {
            let mut request = vec![5, 1, 0, 5, 1, 0, 3, 9];
            request.extend_from_slice(b"localhost");
            request.extend_from_slice(&[0x1f, 0x90]);
            let (target, reply) = run(&request).await;
            assert_eq!(target.unwrap().host, "localhost");
            assert_eq!(reply, [5, 0]);
            let (target, _) = run(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 22]).await;
            assert_eq!(target.unwrap().port, 22);
            let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
            v6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            v6.extend_from_slice(&[0, 22]);
            assert_eq!(run(&v6).await.0.unwrap().host, "::1");
        });
    }

    #[test]
    fn garbage_is_refused() {
        crate::test_support::runtime().block_on(async {
            assert!(matches!(
                run(b"GET / HTTP/1.1\r\n").await.0,
                Err(SocksError::Version(b'G'))
            ));
            let (result, reply) = run(&[5, 1, 2]).await;
            assert!(matches!(result, Err(SocksError::NoAcceptableMethod)));
            assert_eq!(reply, [5, 0xff]);
            let (result, _) = run(&[5, 1, 0, 5, 3, 0, 1, 1, 2, 3, 4, 0, 1]).await;
            assert!(matches!(result, Err(SocksError::Command(3))));
            let mut long = vec![4, 1, 0, 80, 1, 2, 3, 4];
            long.extend(std::iter::repeat_n(b'a', 300));
            assert!(matches!(run(&long).await.0, Err(SocksError::TooLong)));
            // The stream ends in the middle of a request.
            assert!(matches!(run(&[5, 1]).await.0, Err(SocksError::Io(_))));
        });
    }
}
