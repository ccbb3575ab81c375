//! Input layouts shared by the targets.

/// An MQTT publish as `topic \n payload`; `None` when there is no newline or the topic is not
/// UTF-8 (MQTT requires it, so no broker delivers such a topic).
pub fn publish(data: &[u8]) -> Option<(&str, &[u8])> {
    let nl = data.iter().position(|&b| b == b'\n')?;
    let topic = std::str::from_utf8(&data[..nl]).ok()?;
    Some((topic, &data[nl + 1..]))
}
