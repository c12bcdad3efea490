//! A JSON request body documented by its poem-openapi schema but parsed by serde, so
//! that an error names the field at fault (`options.max_attempts: invalid type …`).

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct JsonBody<T>(pub T);

const CONTENT_TYPE: &str = "application/json; charset=utf-8";

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<'a, T: Type + DeserializeOwned + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: CONTENT_TYPE,
                schema: <T as Type>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if is_json(ct) => {}
            Some(ct) => {
                return Err(poem::Error::from_string(
                    format!("content type `{ct}` is not supported: send application/json"),
                    poem::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ));
            }
            None => {
                return Err(ApiError::bad_request(
                    "the request needs `Content-Type: application/json`",
                )
                .into());
            }
        }
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        // serde reads an explicit `null` as an absent optional field; the document
        // does not allow null there, so neither does the engine.
        if let Some(doc) = request.data::<super::spec::Served>()
            && data.windows(4).any(|w| w == b"null")
            && let poem_openapi::registry::MetaSchemaRef::Reference(name) = T::schema_ref()
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data)
            && let Err(message) = doc.refuse_nulls(&name, &value)
        {
            return Err(ApiError::bad_request(message).into());
        }
        let de = &mut serde_json::Deserializer::from_slice(&data);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = if path == "." || path.is_empty() {
                    format!("request body: {inner}")
                } else {
                    format!("{path}: {inner}")
                };
                ApiError::bad_request(message).into()
            })
    }
}
