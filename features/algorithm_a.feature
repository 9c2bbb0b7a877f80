@component @algorithm-a
Feature: Algorithm A turns each audio chunk into signal features
  Algorithm A consumes the audio_stream work queue and publishes one Feature A per chunk
  to the features_a fanout. Features come from real DSP on the samples.

  @smoke
  Scenario: A 440 Hz sine comes out as ~440 Hz
    When sensor "mic" publishes 1 chunk of 440 Hz sine at amplitude 0.5
    Then exactly 1 Feature A message arrives for sensor "mic"
    And Feature A for sensor "mic" reports dominant_frequency_hz of "440 ± 2"
    And Feature A for sensor "mic" reports spectral_centroid_hz of "440 ± 60"
    And Feature A for sensor "mic" reports zero_crossing_rate of "0.055 ± 0.002"

  Scenario Outline: Dominant frequency of pure tones at <rate> Hz
    When sensor "mic" publishes a 100 ms chunk of <frequency> Hz sine at amplitude 0.5 sampled at <rate> Hz
    Then Feature A for sensor "mic" reports dominant_frequency_hz of "<frequency> ± 0.5%"
    And Feature A for sensor "mic" reports duration_ms of "100 ± 0.1"

    Examples:
      | frequency | rate  |
      | 100       | 8000  |
      | 440       | 16000 |
      | 1000      | 44100 |
      | 3000      | 48000 |
      | 5000      | 22050 |

  Scenario Outline: Level features of a sine at amplitude <amplitude>
    When sensor "mic" publishes 1 chunk of 440 Hz sine at amplitude <amplitude>
    Then Feature A for sensor "mic" reports rms of "<rms> ± 0.001"
    And Feature A for sensor "mic" reports peak of "<amplitude> ± 0.001"
    And Feature A for sensor "mic" reports rms_dbfs of "<dbfs> ± 0.05"

    Examples:
      | amplitude | rms    | dbfs   |
      | 1.0       | 0.7071 | -3.01  |
      | 0.5       | 0.3536 | -9.03  |
      | 0.1       | 0.0707 | -23.01 |

  Scenario: Silence has no level and no spectrum
    When sensor "quiet" publishes 1 chunk of silence
    Then Feature A for sensor "quiet" reports rms of "0"
    And Feature A for sensor "quiet" reports rms_dbfs of "-120"
    And Feature A for sensor "quiet" reports zero_crossing_rate of "0"
    And Feature A for sensor "quiet" reports dominant_frequency_hz of "0"
    And Feature A for sensor "quiet" reports clipping_ratio of "0"

  Scenario: White noise is spectrally flat and crosses zero often
    When sensor "hiss" publishes 1 chunk of white noise at amplitude 0.5
    Then Feature A for sensor "hiss" reports spectral_flatness of "0.55 ± 0.15"
    And Feature A for sensor "hiss" reports zero_crossing_rate of "0.5 ± 0.06"
    And Feature A for sensor "hiss" reports rms of "0.2887 ± 0.02"

  Scenario: A hard-clipped sine reports its clipping ratio
    When sensor "loud" publishes 1 chunk of 440 Hz sine clipped at gain 4
    Then Feature A for sensor "loud" reports clipping_ratio of "0.84 ± 0.03"
    And Feature A for sensor "loud" reports peak of "1 ± 0.0001"

  Scenario Outline: Short and long chunks (<ms> ms)
    When sensor "mic" publishes a <ms> ms chunk of 1000 Hz sine at amplitude 0.5 sampled at 16000 Hz
    Then Feature A for sensor "mic" reports duration_ms of "<ms> ± 0.1"
    And Feature A for sensor "mic" reports sample_count of "<frames>"
    And Feature A for sensor "mic" reports dominant_frequency_hz of "1000 ± <tolerance>"

    Examples:
      | ms   | frames | tolerance |
      | 10   | 160    | 20        |
      | 2000 | 32000  | 1         |

  Scenario: Stereo chunks are mixed down for the spectrum
    When sensor "pair" publishes a stereo chunk of 440 Hz sine at amplitude 0.5
    Then Feature A for sensor "pair" reports dominant_frequency_hz of "440 ± 2"
    And Feature A for sensor "pair" reports sample_count of "1600"

  Scenario: 16-bit PCM chunks decode to the same features
    When sensor "int" publishes a 16-bit PCM chunk of 440 Hz sine at amplitude 0.5
    Then Feature A for sensor "int" reports dominant_frequency_hz of "440 ± 2"
    And Feature A for sensor "int" reports rms of "0.3536 ± 0.001"

  Scenario: A WAV recording is processed chunk by chunk
    When sensor "rec" streams the WAV fixture "a440_1s_16k.wav"
    Then exactly 10 Feature A messages arrive for sensor "rec"
    And Feature A for sensor "rec" reports dominant_frequency_hz of "440 ± 2"

  Scenario: Exactly one Feature A per chunk, with lineage and instance id
    When sensor "mic" publishes 5 chunks of 440 Hz sine at amplitude 0.5
    Then exactly 5 Feature A messages arrive for sensor "mic"
    And each Feature A for sensor "mic" carries the lineage of its chunk
    And every Feature A for sensor "mic" names the instance that processed it

  Scenario Outline: A chunk with <defect> is dead-lettered with reason <reason>
    When sensor "good" publishes 2 chunks of 440 Hz sine at amplitude 0.5
    And sensor "bad" publishes a chunk with <defect>
    And sensor "good" publishes 2 chunks of 440 Hz sine at amplitude 0.5
    Then the chunk from sensor "bad" is dead-lettered to "audio_stream.dlq" with reason "<reason>"
    And no Feature A arrives for the broken message of sensor "bad" within 300 ms
    And exactly 4 Feature A messages arrive for sensor "good"

    Examples:
      | defect                | reason                     |
      | not JSON              | invalid_json               |
      | schema version 2      | unsupported_schema_version |
      | no sensor_id          | schema_violation           |
      | a NaN sample          | non_finite_sample          |
      | an infinite sample    | non_finite_sample          |
      | sample rate 12345     | unsupported_sample_rate    |
      | an oversized payload  | oversized_payload          |
      | invalid base64        | invalid_base64             |
      | a partial frame       | partial_frame              |
      | an invalid message_id | schema_violation           |
      | 3 channels            | schema_violation           |
      | a sample beyond full scale | sample_out_of_range        |
      | a capture time an hour ahead | timestamp_out_of_range     |
      | a capture time in 1970 | timestamp_out_of_range     |
      | a message_id property that differs from the body | message_id_mismatch        |
      | the x-schema header of Feature A | schema_header_mismatch     |
      | content type text/plain | unsupported_content_type   |
      | gzip content encoding | unsupported_content_encoding |
      | a sensor id of 600 multi-byte characters | schema_violation           |
      | 11 seconds of audio   | chunk_too_long             |
