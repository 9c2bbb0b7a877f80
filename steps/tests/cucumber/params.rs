//! Typed step parameters: signals, feature types, components, durations, malformations.

use cucumber::Parameter;
use harness::signal::Signal;
use std::str::FromStr;
use std::time::Duration;

/// A test signal as a QA engineer writes it.
#[derive(Debug, Clone, Copy, Parameter)]
#[param(
    name = "signal",
    regex = r"(?:silence|white noise at amplitude [0-9.]+|[0-9.]+ Hz sine at amplitude [0-9.]+|[0-9.]+ Hz sine clipped at gain [0-9.]+)"
)]
pub struct SignalParam(pub Signal);

impl FromStr for SignalParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| t.parse::<f64>().map_err(|e| format!("{t:?} in {s:?}: {e}"));
        let words: Vec<&str> = s.split_whitespace().collect();
        let signal = match words.as_slice() {
            ["silence"] => Signal::Silence,
            ["white", "noise", "at", "amplitude", a] => Signal::WhiteNoise { amplitude: num(a)?, seed: rand::random() },
            [f, "Hz", "sine", "at", "amplitude", a] => Signal::Sine { frequency_hz: num(f)?, amplitude: num(a)? },
            [f, "Hz", "sine", "clipped", "at", "gain", g] => {
                Signal::ClippedSine { frequency_hz: num(f)?, gain: num(g)? }
            }
            _ => return Err(format!("unknown signal {s:?}")),
        };
        Ok(SignalParam(signal))
    }
}

/// `A` or `B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "type", regex = "[AB]")]
pub struct FeatureTypeParam(pub contract::FeatureType);

impl FromStr for FeatureTypeParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(FeatureTypeParam)
    }
}

impl FeatureTypeParam {
    pub fn letter(self) -> &'static str {
        self.0.as_str()
    }
    pub fn source(self) -> harness::amqp::Source {
        match self.0 {
            contract::FeatureType::A => harness::amqp::Source::FeatureA,
            contract::FeatureType::B => harness::amqp::Source::FeatureB,
        }
    }
}

/// A pipeline component a step can start, stop, kill or scale.
#[derive(Debug, Clone, Copy, Parameter)]
#[param(name = "component", regex = "Algorithm A|Algorithm B|data writer|REST API")]
pub struct ComponentParam(pub harness::sut::Component);

impl FromStr for ComponentParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(ComponentParam)
    }
}

/// `250 ms`, `2 s`, `1.5s`.
#[derive(Debug, Clone, Copy, Parameter)]
#[param(name = "duration", regex = r"[0-9.]+ ?(?:ms|s)")]
pub struct DurationParam(pub Duration);

impl FromStr for DurationParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.replace(' ', "");
        let (n, unit) = if let Some(n) = s.strip_suffix("ms") { (n, 1e-3) } else { (s.trim_end_matches('s'), 1.0) };
        let v: f64 = n.parse().map_err(|e| format!("duration {s:?}: {e}"))?;
        Ok(DurationParam(Duration::from_secs_f64(v * unit)))
    }
}

/// The ways a chunk can be broken on the bus, each with the DLQ reason code it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(
    name = "malformation",
    regex = "not JSON|schema version 2|no sensor_id|a NaN sample|an infinite sample|sample rate 12345|an oversized payload|invalid base64|a partial frame|an invalid message_id|3 channels|a sample beyond full scale|a capture time an hour ahead|a capture time in 1970|a message_id property that differs from the body|the x-schema header of Feature A|content type text/plain|gzip content encoding|a sensor id of 600 multi-byte characters|11 seconds of audio"
)]
pub enum Malformation {
    NotJson,
    SchemaVersion2,
    NoSensorId,
    NanSample,
    InfiniteSample,
    WrongSampleRate,
    Oversized,
    InvalidBase64,
    PartialFrame,
    InvalidMessageId,
    ThreeChannels,
    SampleBeyondFullScale,
    FutureCaptureTime,
    EpochCaptureTime,
    MessageIdPropertyDiffers,
    WrongSchemaHeader,
    TextPlain,
    Gzip,
    MultibyteSensorId,
    TooLong,
}

impl FromStr for Malformation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "not JSON" => Malformation::NotJson,
            "schema version 2" => Malformation::SchemaVersion2,
            "no sensor_id" => Malformation::NoSensorId,
            "a NaN sample" => Malformation::NanSample,
            "an infinite sample" => Malformation::InfiniteSample,
            "sample rate 12345" => Malformation::WrongSampleRate,
            "an oversized payload" => Malformation::Oversized,
            "invalid base64" => Malformation::InvalidBase64,
            "a partial frame" => Malformation::PartialFrame,
            "an invalid message_id" => Malformation::InvalidMessageId,
            "3 channels" => Malformation::ThreeChannels,
            "a sample beyond full scale" => Malformation::SampleBeyondFullScale,
            "a capture time an hour ahead" => Malformation::FutureCaptureTime,
            "a capture time in 1970" => Malformation::EpochCaptureTime,
            "a message_id property that differs from the body" => Malformation::MessageIdPropertyDiffers,
            "the x-schema header of Feature A" => Malformation::WrongSchemaHeader,
            "content type text/plain" => Malformation::TextPlain,
            "gzip content encoding" => Malformation::Gzip,
            "a sensor id of 600 multi-byte characters" => Malformation::MultibyteSensorId,
            "11 seconds of audio" => Malformation::TooLong,
            other => return Err(format!("unknown malformation {other:?}")),
        })
    }
}

/// An input channel of the pipeline, for hostile input.
#[derive(Debug, Clone, Copy, Parameter)]
#[param(name = "channel", regex = "audio stream|features_a fanout|features_b fanout")]
pub struct ChannelParam(pub harness::fuzz::Channel);

impl FromStr for ChannelParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim_end_matches(" fanout").parse().map(ChannelParam)
    }
}

/// A shape of non-stationary chunk (`harness::signal::ChunkKind`), as a scenario names it.
#[derive(Debug, Clone, Copy, Parameter)]
#[param(
    name = "chunk_kind",
    regex = "silence then a tone|a tone that stops mid-chunk|a burst at the end|a tone of no whole number of periods|a tone over a DC offset|tones within a band"
)]
pub struct ChunkKindParam(pub harness::signal::ChunkKind);

impl FromStr for ChunkKindParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(ChunkKindParam)
    }
}
