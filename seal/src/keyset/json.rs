//! Tink's JSON keyset form: the protobuf JSON mapping of `google.crypto.tink.Keyset`, with
//! `keyData.value` in base64 and enums by name.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Entry, Keyset, KeysetError};
use crate::proto::{KeyMaterialType, KeyStatusType, OutputPrefixType};

/// A number that protobuf's JSON mapping may also write as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(u32),
    Text(String),
}

/// An enum value, by name or by number.
#[derive(Deserialize)]
#[serde(untagged)]
enum EnumValue {
    Int(i32),
    Name(String),
}

/// An enum value as written: by name when the value has one, else by number, so that a
/// value this version does not know (kept in a disabled key) survives a round trip.
#[derive(Serialize)]
#[serde(untagged)]
enum EnumOut {
    Name(&'static str),
    Int(i32),
}

impl EnumOut {
    fn of<T: TryFrom<i32>>(value: i32, name: fn(T) -> &'static str) -> Self {
        T::try_from(value).map_or(EnumOut::Int(value), |known| EnumOut::Name(name(known)))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonKeysetIn {
    primary_key_id: Option<Number>,
    #[serde(default)]
    key: Vec<JsonKeyIn>,
    encrypted_keyset: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonKeyIn {
    key_data: Option<JsonKeyDataIn>,
    status: Option<EnumValue>,
    key_id: Option<Number>,
    output_prefix_type: Option<EnumValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonKeyDataIn {
    #[serde(default)]
    type_url: String,
    #[serde(default)]
    value: Zeroizing<String>,
    key_material_type: Option<EnumValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonKeysetOut<'a> {
    primary_key_id: u32,
    key: Vec<JsonKeyOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonKeyOut<'a> {
    key_data: JsonKeyDataOut<'a>,
    status: EnumOut,
    key_id: u32,
    output_prefix_type: EnumOut,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonKeyDataOut<'a> {
    type_url: &'a str,
    value: Zeroizing<String>,
    key_material_type: EnumOut,
}

pub(super) fn parse(bytes: &[u8]) -> Result<Keyset, KeysetError> {
    let keyset: JsonKeysetIn = serde_json::from_slice(bytes)?;
    if keyset.encrypted_keyset.is_some() {
        return Err(KeysetError::Encrypted);
    }
    if keyset.key.is_empty() {
        return Err(KeysetError::Empty);
    }
    if keyset.key.len() > super::MAX_KEYS {
        return Err(KeysetError::TooManyKeys(keyset.key.len()));
    }
    let primary = number(0, "primaryKeyId", keyset.primary_key_id)?;
    let entries = keyset
        .key
        .into_iter()
        .map(entry)
        .collect::<Result<Vec<_>, _>>()?;
    Keyset::from_entries(primary, entries)
}

fn entry(key: JsonKeyIn) -> Result<Entry, KeysetError> {
    let key_id = number(0, "keyId", key.key_id)?;
    let status = enum_value(key_id, "status", key.status, KeyStatusType::from_str_name)?;
    let prefix = enum_value(
        key_id,
        "outputPrefixType",
        key.output_prefix_type,
        OutputPrefixType::from_str_name,
    )?;
    let (type_url, material, value) = match key.key_data {
        Some(data) => {
            let material = enum_value(
                key_id,
                "keyMaterialType",
                data.key_material_type,
                KeyMaterialType::from_str_name,
            )?;
            let value = STANDARD
                .decode(data.value.as_bytes())
                .map_err(|_| KeysetError::Base64 { key_id })?;
            (Some(data.type_url), material, Zeroizing::new(value))
        }
        None => (None, 0, Zeroizing::new(Vec::new())),
    };
    Entry::new(key_id, status, prefix, type_url, material, value)
}

fn number(key_id: u32, field: &'static str, value: Option<Number>) -> Result<u32, KeysetError> {
    match value {
        None => Ok(0),
        Some(Number::Int(n)) => Ok(n),
        Some(Number::Text(text)) => text.parse().map_err(|_| KeysetError::UnknownEnum {
            key_id,
            field,
            value: text.clone(),
        }),
    }
}

/// Maps a JSON enum (name or number) to its protobuf number. Names are Tink's
/// (`ENABLED`, `RAW`, `SYMMETRIC`), which prost exposes in `from_str_name`.
fn enum_value<T: Into<i32>>(
    key_id: u32,
    field: &'static str,
    value: Option<EnumValue>,
    by_name: fn(&str) -> Option<T>,
) -> Result<i32, KeysetError> {
    match value {
        None => Ok(0),
        Some(EnumValue::Int(n)) => Ok(n),
        Some(EnumValue::Name(name)) => {
            by_name(&name)
                .map(Into::into)
                .ok_or(KeysetError::UnknownEnum {
                    key_id,
                    field,
                    value: name,
                })
        }
    }
}

pub(super) fn write(keyset: &Keyset) -> Zeroizing<String> {
    let key = keyset
        .entries
        .iter()
        .map(|e| JsonKeyOut {
            key_data: JsonKeyDataOut {
                type_url: &e.type_url,
                value: Zeroizing::new(STANDARD.encode(&*e.value)),
                key_material_type: EnumOut::of(e.key_material_type, KeyMaterialType::as_str_name),
            },
            status: EnumOut::of(e.status.to_proto(), KeyStatusType::as_str_name),
            key_id: e.key_id,
            output_prefix_type: EnumOut::of(e.output_prefix_type, OutputPrefixType::as_str_name),
        })
        .collect();
    let out = JsonKeysetOut {
        primary_key_id: keyset.primary_key_id,
        key,
    };
    // Serializing plain structs of strings and integers into a String cannot fail.
    let mut text = serde_json::to_string_pretty(&out).unwrap_or_default();
    text.push('\n');
    Zeroizing::new(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shape_tink_python_writes() {
        // Shape of `tink.json_proto_keyset_format.serialize` output (value shortened to a
        // valid AES128_GCM_HKDF_4KB key: params {4096, 16, SHA256}, 16-byte key).
        let json = r#"{
          "primaryKeyId": 1234,
          "key": [{
            "keyData": {
              "typeUrl": "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
              "value": "EgcIgCAQEBgDGhAAAQIDBAUGBwgJCgsMDQ4P",
              "keyMaterialType": "SYMMETRIC"
            },
            "status": "ENABLED",
            "keyId": 1234,
            "outputPrefixType": "RAW"
          }]
        }"#;
        let keyset = Keyset::from_json(json.as_bytes()).unwrap();
        let key = keyset.primary().unwrap();
        assert_eq!(key.id(), 1234);
        assert_eq!(key.params().segment_size(), 4096);
        assert_eq!(key.key_value(), (0u8..16).collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn unknown_enum_names_are_errors() {
        let json = r#"{"primaryKeyId": 1, "key": [{"status": "SHINY", "keyId": 1}]}"#;
        assert!(matches!(
            Keyset::from_json(json.as_bytes()),
            Err(KeysetError::UnknownEnum {
                field: "status",
                ..
            })
        ));
    }

    /// Found by the `keyset_binary` fuzz target: a disabled key may carry enum numbers this
    /// version has no name for; writing them by number keeps the keyset unchanged.
    #[test]
    fn unnamed_enum_numbers_of_disabled_keys_survive_a_round_trip() {
        let json = r#"{"primaryKeyId": 1, "key": [
            {"keyData": {"typeUrl": "x", "value": "", "keyMaterialType": 77},
             "status": "DISABLED", "keyId": 2, "outputPrefixType": 12345},
            {"keyData": {
               "typeUrl": "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
               "value": "EgcIgCAQEBgDGhAAAQIDBAUGBwgJCgsMDQ4P",
               "keyMaterialType": "SYMMETRIC"},
             "status": "ENABLED", "keyId": 1, "outputPrefixType": "RAW"}]}"#;
        let keyset = Keyset::from_json(json.as_bytes()).unwrap();
        let written = keyset.to_json();
        assert!(
            written.contains("12345") && written.contains("\"RAW\""),
            "{}",
            *written
        );
        let again = Keyset::from_json(written.as_bytes()).unwrap();
        assert_eq!(*again.to_binary(), *keyset.to_binary());
    }
}
