//! JSON arguments to bincode-1 bytes, and bincode-1 results back to JSON.
//!
//! bincode 1 is not self-describing: the bytes of an argument tuple depend on
//! the Rust types of the method's parameters, which the plugin library does not
//! publish. So the JSON says what it can and names the rest:
//!
//! * The arguments are a JSON **array**, one element per parameter; the tuple
//!   is the elements' encodings back to back (no length prefix). `[]` is `()`.
//! * Plain values: an integer is `i64` (or `u64` above `i64::MAX`), a
//!   fractional number `f64`, a string `String`, `true`/`false` `bool`, `null`
//!   `Option::None`, an array `Vec<T>` (each element by these same rules).
//! * Anything else is a one-key object naming the type: `{"u32": 7}`,
//!   `{"i8": -1}` (all of `u8`..`u64`, `i8`..`i64`, `u128`/`i128` are not
//!   supported), `{"f32": 1.5}`, `{"char": "x"}`, `{"bytes": "00ff"}`
//!   (`Vec<u8>` from hex), `{"some": v}` (`Option::Some`), `{"unit": null}`,
//!   `{"tuple": [..]}` (a tuple or a struct: fields back to back),
//!   `{"map": [[k, v], ..]}` (a map, pairs in order),
//!   `{"variant": [index, value]}` (an enum variant: `u32` index, then its
//!   data; use `{"unit": null}` for none).
//! * Not expressible: integers wider than 64 bits.
//!
//! Results are decoded with `--returns TYPE` (one of the scalar names above,
//! `string`, `bytes`, `unit`, or `raw` for the bytes as hex).

use serde_json::{Map, Value};

/// Encodes the JSON argument array as a bincode-1 tuple.
pub fn encode_args(v: &Value) -> Result<Vec<u8>, String> {
    let Value::Array(items) = v else {
        return Err("arguments must be a JSON array, one element per parameter".into());
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        encode(item, &mut out).map_err(|e| format!("argument {i}: {e}"))?;
    }
    Ok(out)
}

fn len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn encode(v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match v {
        Value::Null => out.push(0),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(&i.to_le_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(&u.to_le_bytes());
            } else {
                let f = n.as_f64().ok_or("unrepresentable number")?;
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        Value::String(s) => {
            len(out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            len(out, items.len());
            for item in items {
                encode(item, out)?;
            }
        }
        Value::Object(map) => encode_tagged(map, out)?,
    }
    Ok(())
}

fn int(v: &Value, ty: &str) -> Result<i128, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| format!("{ty}: {n} is not an integer")),
        other => Err(format!("{ty}: expected an integer, got {other}")),
    }
}

fn encode_tagged(map: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), String> {
    let mut it = map.iter();
    let (Some((tag, v)), None) = (it.next(), it.next()) else {
        return Err("a typed value is an object with exactly one key, e.g. {\"u32\": 7}".into());
    };
    macro_rules! ints {
        ($($name:literal => $t:ty),*) => {
            match tag.as_str() {
                $($name => {
                    let i = int(v, $name)?;
                    let x = <$t>::try_from(i).map_err(|_| format!("{}: {i} out of range", $name))?;
                    out.extend_from_slice(&x.to_le_bytes());
                    return Ok(());
                })*
                _ => {}
            }
        };
    }
    ints!("u8" => u8, "u16" => u16, "u32" => u32, "u64" => u64, "i8" => i8, "i16" => i16, "i32" => i32, "i64" => i64);
    match tag.as_str() {
        "f32" | "f64" => {
            let f = v.as_f64().ok_or_else(|| format!("{tag}: expected a number, got {v}"))?;
            if tag == "f32" {
                out.extend_from_slice(&(f as f32).to_le_bytes());
            } else {
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        "char" => {
            let s = v.as_str().ok_or("char: expected a one-character string")?;
            let mut chars = s.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err("char: expected a one-character string".into());
            };
            // bincode 1 encodes a char as its UTF-8 bytes.
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        "bytes" => {
            let s = v.as_str().ok_or("bytes: expected a hex string")?;
            let b = hex_decode(s)?;
            len(out, b.len());
            out.extend_from_slice(&b);
        }
        "some" => {
            out.push(1);
            encode(v, out)?;
        }
        "unit" => {}
        "tuple" => {
            let items = v.as_array().ok_or("tuple: expected an array")?;
            for item in items {
                encode(item, out)?;
            }
        }
        "map" => {
            let pairs = v.as_array().ok_or("map: expected an array of [key, value] pairs")?;
            len(out, pairs.len());
            for pair in pairs {
                match pair.as_array().map(Vec::as_slice) {
                    Some([k, val]) => {
                        encode(k, out)?;
                        encode(val, out)?;
                    }
                    _ => return Err("map: every entry is a [key, value] pair".into()),
                }
            }
        }
        "variant" => match v.as_array().map(Vec::as_slice) {
            Some([index, data]) => {
                let i = int(index, "variant index")?;
                let i = u32::try_from(i).map_err(|_| format!("variant index {i} out of range"))?;
                out.extend_from_slice(&i.to_le_bytes());
                encode(data, out)?;
            }
            _ => return Err("variant: expected [index, value]".into()),
        },
        other => return Err(format!("unknown type name {other:?}")),
    }
    Ok(())
}

/// Decodes hex (whitespace allowed).
pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("hex: odd number of digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).map_err(|_| "hex: not ASCII".to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("hex: bad digits {s:?}"))
        })
        .collect()
}

/// Lower-case hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes a result of type `ty` into JSON; the whole output must be used.
pub fn decode_result(ty: &str, bytes: &[u8]) -> Result<Value, String> {
    fn de<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
            .with_limit(b.len() as u64)
            .deserialize(b)
            .map_err(|e| e.to_string())
    }
    Ok(match ty {
        "raw" => Value::String(hex_encode(bytes)),
        "unit" => {
            de::<()>(bytes)?;
            Value::Null
        }
        "bool" => Value::Bool(de(bytes)?),
        "u8" => de::<u8>(bytes)?.into(),
        "u16" => de::<u16>(bytes)?.into(),
        "u32" => de::<u32>(bytes)?.into(),
        "u64" => de::<u64>(bytes)?.into(),
        "i8" => de::<i8>(bytes)?.into(),
        "i16" => de::<i16>(bytes)?.into(),
        "i32" => de::<i32>(bytes)?.into(),
        "i64" => de::<i64>(bytes)?.into(),
        "f32" => de::<f32>(bytes)?.into(),
        "f64" => de::<f64>(bytes)?.into(),
        "string" => Value::String(de(bytes)?),
        "bytes" => Value::String(hex_encode(&de::<Vec<u8>>(bytes)?)),
        other => return Err(format!("unknown --returns type {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same<T: serde::Serialize>(j: Value, t: &T) {
        assert_eq!(encode_args(&j).unwrap(), bincode::serialize(t).unwrap(), "{j}");
    }

    #[test]
    fn encodes_like_bincode() {
        same(json!([]), &());
        same(json!(["world"]), &("world".to_string(),));
        same(json!([2, 40]), &(2i64, 40i64));
        same(json!([-5, 1.5, true]), &(-5i64, 1.5f64, true));
        same(json!([{"u32": 7}, {"i8": -1}, {"f32": 0.5}]), &(7u32, -1i8, 0.5f32));
        same(json!([[1, 2, 3]]), &(vec![1i64, 2, 3],));
        same(json!([{"bytes": "00ff10"}]), &(vec![0u8, 255, 16],));
        same(json!([null, {"some": "x"}]), &(None::<String>, Some("x".to_string())));
        same(json!([{"tuple": [{"u8": 1}, "a"]}]), &((1u8, "a".to_string()),));
        same(json!([{"char": "é"}]), &('é',));
        same(
            json!([{"map": [["k", 1]]}]),
            &(std::collections::BTreeMap::from([("k".to_string(), 1i64)]),),
        );
        same(json!([{"u64": u64::MAX}]), &(u64::MAX,));
    }

    #[test]
    fn refuses_what_it_cannot_express() {
        assert!(encode_args(&json!({"a": 1})).is_err());
        assert!(encode_args(&json!([{"u8": 256}])).unwrap_err().contains("out of range"));
        assert!(encode_args(&json!([{"u128": 1}])).unwrap_err().contains("unknown type"));
        assert!(encode_args(&json!([{"u8": 1, "u16": 2}])).is_err());
    }

    #[test]
    fn decodes_results() {
        let b = bincode::serialize(&"hi".to_string()).unwrap();
        assert_eq!(decode_result("string", &b).unwrap(), json!("hi"));
        assert_eq!(decode_result("raw", &[1, 171]).unwrap(), json!("01ab"));
        assert_eq!(decode_result("i64", &42i64.to_le_bytes()).unwrap(), json!(42));
        assert!(decode_result("u32", &42i64.to_le_bytes()).is_err(), "trailing bytes");
    }
}
