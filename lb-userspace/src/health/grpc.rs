//! The gRPC health checking protocol (`grpc.health.v1.Health/Check`, as Envoy's and
//! Kubernetes' gRPC probes ask it): the request for a service, and the answer's serving status.
//! The two messages are a string and an enum each, so they are written and read here rather
//! than with a protobuf code generator.
use bytes::Bytes;

/// The method's path.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// The longest answer read (a `HealthCheckResponse` is a few bytes).
pub const MAX_ANSWER: usize = 4096;

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// `HealthCheckRequest { service }` in gRPC's framing: not compressed, its length, then the
/// message (field 1, a string; none for the whole server).
pub fn request(service: &str) -> Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

/// Whether an answer's body (one framed `HealthCheckResponse`) says SERVING; else why not.
pub fn serving(body: &[u8]) -> Result<(), String> {
    let Some((&[compressed, a, b, c, d], message)) = body.split_first_chunk::<5>() else {
        return Err("gRPC health check: no message in the answer".into());
    };
    if compressed != 0 {
        return Err("gRPC health check: a compressed answer (none was asked for)".into());
    }
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    let message = message.get(..length).ok_or("gRPC health check: the answer's message is cut short")?;
    match status(message).ok_or("gRPC health check: the answer is not a HealthCheckResponse")? {
        SERVING => Ok(()),
        other => Err(format!("gRPC health check: {}", status_name(other))),
    }
}

/// The `status` field (1) of a `HealthCheckResponse`; 0 (UNKNOWN) when absent, None when the
/// message does not parse.
fn status(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        match key & 7 {
            0 => {
                let value = read_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            1 => message = message.get(8..)?,
            2 => {
                let length = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(length..)?;
            }
            5 => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => format!("status {other}"),
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What grpcio's health servicer sends for each status (`HealthCheckResponse(status=…)`
    /// serialized, framed).
    #[test]
    fn answers_read_as_grpc_servers_write_them() {
        assert_eq!(serving(&[0, 0, 0, 0, 2, 0x08, 0x01]), Ok(()));
        assert_eq!(serving(&[0, 0, 0, 0, 2, 0x08, 0x02]), Err("gRPC health check: NOT_SERVING".into()));
        assert_eq!(serving(&[0, 0, 0, 0, 2, 0x08, 0x03]), Err("gRPC health check: SERVICE_UNKNOWN".into()));
        assert_eq!(serving(&[0, 0, 0, 0, 0]), Err("gRPC health check: UNKNOWN".into()), "the default");
        // An unknown field before the status is skipped.
        assert_eq!(serving(&[0, 0, 0, 0, 5, 0x12, 0x01, b'x', 0x08, 0x01]), Ok(()));
        assert!(serving(&[0, 0, 0, 0, 9, 0x08, 0x01]).unwrap_err().contains("cut short"));
        assert!(serving(&[1, 0, 0, 0, 2, 0x08, 0x01]).unwrap_err().contains("compressed"));
        assert!(serving(&[0, 0, 0, 0, 1, 0x08]).unwrap_err().contains("not a HealthCheckResponse"));
        assert!(serving(&[0, 0]).unwrap_err().contains("no message"));
    }

    #[test]
    fn a_request_names_its_service_or_none() {
        assert_eq!(&request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(&request("pkg.Echo")[..], [&[0, 0, 0, 0, 10, 0x0a, 8][..], b"pkg.Echo"].concat());
        let long = "s".repeat(200);
        assert_eq!(&request(&long)[5..8], [0x0a, 0xc8, 0x01], "a length of two varint bytes");
    }
}
