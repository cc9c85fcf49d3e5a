//! A JSON transform: takes an object, upper-cases its string values, and adds `"keys"`,
//! the number of keys it had. Anything else is an error.

microsched_service::export_service!(logic::handle);

mod logic {
    #![forbid(unsafe_code)]

    use serde_json::Value;

    pub fn handle(input: &[u8]) -> Result<Vec<u8>, String> {
        let value: Value = serde_json::from_slice(input).map_err(|e| format!("bad JSON: {e}"))?;
        let Value::Object(mut object) = value else {
            return Err("expected a JSON object".into());
        };
        let keys = object.len();
        for value in object.values_mut() {
            if let Value::String(s) = value {
                *s = s.to_uppercase();
            }
        }
        object.insert("keys".into(), Value::from(keys));
        serde_json::to_vec(&Value::Object(object)).map_err(|e| e.to_string())
    }
}
