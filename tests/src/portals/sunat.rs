//! sunat: a tax authority's electronic mailbox. A taxpayer logs in with RUC, user and
//! password and reads an inbox of notices, a few pages of them, each with an attached
//! PDF or ZIP to download. Sessions expire after a while (`session_ttl_ms`), as the
//! real one's do; every login is counted under `login:{user}` in the submissions.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Form, Path, Query};
use poem::{EndpointExt, Request, Response, get, handler};
use serde::Deserialize;

use super::{Portal, admin_routes, esc, ok_page, page, redirect};

pub const RUC: &str = "20123456789";
pub const USER: &str = "FAENA01";
pub const PASSWORD: &str = "sunat-demo";
/// Messages in the inbox, newest first, `PAGE_SIZE` a page.
pub const MESSAGES: u32 = 25;
pub const PAGE_SIZE: u32 = 10;

pub struct Sunat {
    pub portal: Arc<Portal>,
}

impl Sunat {
    pub fn new() -> Arc<Sunat> {
        Arc::new(Sunat {
            portal: Portal::new("sunat"),
        })
    }
}

/// The notice `id` (1 = newest): subject, date, attachment name.
pub fn message(id: u32) -> Option<(String, String, String)> {
    if id == 0 || id > MESSAGES {
        return None;
    }
    const KINDS: &[&str] = &[
        "Resolución de Intendencia",
        "Orden de Pago",
        "Esquela de Citación",
        "Constancia de Presentación",
        "Resolución de Multa",
    ];
    let kind = KINDS[id as usize % KINDS.len()];
    let subject = format!("{kind} N° 0{:08}", 23_000_000 + id * 37);
    let day = 28 - (id % 28);
    let date = format!("2026-{:02}-{day:02}", 11 - (id / 28));
    let file = if id.is_multiple_of(2) {
        format!("notificacion-{id:03}.pdf")
    } else {
        format!("notificacion-{id:03}.zip")
    };
    Some((subject, date, file))
}

/// A one-page PDF saying which notice it is.
pub fn pdf(id: u32, subject: &str) -> Vec<u8> {
    let text = format!("SUNAT - {subject} - mensaje {id}");
    let stream = format!(
        "BT /F1 12 Tf 50 750 Td ({}) Tj ET",
        text.replace('(', "[").replace(')', "]")
    );
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A ZIP archive (stored, no compression) holding one file.
pub fn zip(name: &str, content: &[u8]) -> Vec<u8> {
    let crc = crc32(content);
    let (n, len) = (name.len() as u16, content.len() as u32);
    let mut out = Vec::new();
    // Local file header.
    out.extend(0x0403_4b50u32.to_le_bytes());
    out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]); // version, flags, stored, time, date
    out.extend(crc.to_le_bytes());
    out.extend(len.to_le_bytes());
    out.extend(len.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(name.as_bytes());
    out.extend(content);
    let central = out.len() as u32;
    out.extend(0x0201_4b50u32.to_le_bytes());
    out.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
    out.extend(crc.to_le_bytes());
    out.extend(len.to_le_bytes());
    out.extend(len.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend([0u8; 8]); // extra, comment, disk, internal attributes
    out.extend(0u32.to_le_bytes()); // external attributes
    out.extend(0u32.to_le_bytes()); // offset of the local header
    out.extend(name.as_bytes());
    let size = out.len() as u32 - central;
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(1u16.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend(central.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// The attachment of notice `id`: its name, content type and bytes.
pub fn attachment(id: u32) -> Option<(String, &'static str, Vec<u8>)> {
    let (subject, _, file) = message(id)?;
    Some(if id.is_multiple_of(2) {
        (file, "application/pdf", pdf(id, &subject))
    } else {
        let inner = pdf(id, &subject);
        (
            file,
            "application/zip",
            zip(&format!("notificacion-{id:03}.pdf"), &inner),
        )
    })
}

pub fn routes(s: Arc<Sunat>) -> poem::endpoint::BoxEndpoint<'static> {
    poem::Route::new()
        .at("/login", get(login_page).post(login))
        .at("/buzon", get(inbox))
        .at("/buzon/:id", get(detail))
        .at("/buzon/:id/adjunto", get(download))
        .nest("/admin", admin_routes(s.portal.clone(), || {}))
        .data(s)
        .boxed()
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
}

fn login_form(message: Option<&str>) -> Response {
    let error = message
        .map(|m| format!("<div id=\"error\" class=\"error\">{}</div>", esc(m)))
        .unwrap_or_default();
    ok_page(
        "sunat",
        "login",
        "SUNAT Operaciones en Línea",
        &format!(
            "{error}<form method=\"post\" action=\"/sunat/login\">\
             <label>RUC</label><input id=\"ruc\" name=\"ruc\" maxlength=\"11\">\
             <label>Usuario</label><input id=\"usuario\" name=\"usuario\">\
             <label>Clave</label><input id=\"clave\" name=\"clave\" type=\"password\">\
             <button id=\"ingresar\" type=\"submit\">Iniciar sesión</button></form>"
        ),
    )
}

#[handler]
async fn login_page(Data(s): Data<&Arc<Sunat>>, Query(q): Query<LoginQuery>) -> Response {
    if let Some(r) = s.portal.gate().await {
        return r;
    }
    login_form(
        q.expired
            .is_some()
            .then_some("Su sesión ha expirado. Ingrese nuevamente."),
    )
}

#[derive(Deserialize)]
struct Credentials {
    ruc: String,
    usuario: String,
    clave: String,
}

#[handler]
async fn login(Data(s): Data<&Arc<Sunat>>, Form(c): Form<Credentials>) -> Response {
    if let Some(r) = s.portal.gate().await {
        return r;
    }
    if c.ruc != RUC || c.usuario != USER || c.clave != PASSWORD {
        return login_form(Some("El RUC, usuario o clave no son correctos."));
    }
    s.portal.count(&format!("login:{}", c.usuario));
    let cookie = s.portal.login(&c.usuario);
    let mut r = redirect("/sunat/buzon");
    r.headers_mut()
        .insert(poem::http::header::SET_COOKIE, cookie.parse().unwrap());
    r
}

#[derive(Deserialize)]
struct PageQuery {
    page: Option<u32>,
}

#[handler]
async fn inbox(Data(s): Data<&Arc<Sunat>>, req: &Request, Query(q): Query<PageQuery>) -> Response {
    if let Some(r) = s.portal.gate().await {
        return r;
    }
    if let Err(r) = s.portal.session(req) {
        return r;
    }
    let pages = MESSAGES.div_ceil(PAGE_SIZE);
    let n = q.page.unwrap_or(1).clamp(1, pages);
    let mut rows = String::new();
    for id in ((n - 1) * PAGE_SIZE + 1)..=(n * PAGE_SIZE).min(MESSAGES) {
        let (subject, date, file) = message(id).expect("in range");
        rows.push_str(&format!(
            "<tr class=\"mensaje\" data-id=\"{id}\"><td class=\"fecha\">{date}</td>\
             <td class=\"asunto\"><a href=\"/sunat/buzon/{id}\">{}</a></td>\
             <td class=\"adjunto\">{}</td></tr>",
            esc(&subject),
            esc(&file)
        ));
    }
    let next = if n < pages {
        format!(
            "<a id=\"siguiente\" href=\"/sunat/buzon?page={}\">Siguiente</a>",
            n + 1
        )
    } else {
        String::new()
    };
    ok_page(
        "sunat",
        "buzon",
        "Buzón electrónico",
        &format!(
            "<table id=\"mensajes\"><tr><th>Fecha</th><th>Asunto</th><th>Adjunto</th></tr>{rows}</table>\
             <p>Página <span id=\"pagina\">{n}</span> de <span id=\"paginas\">{pages}</span> {next}</p>"
        ),
    )
}

#[handler]
async fn detail(Data(s): Data<&Arc<Sunat>>, req: &Request, Path(id): Path<u32>) -> Response {
    if let Some(r) = s.portal.gate().await {
        return r;
    }
    if let Err(r) = s.portal.session(req) {
        return r;
    }
    let Some((subject, date, file)) = message(id) else {
        return page(
            StatusCode::NOT_FOUND,
            "sunat",
            "no-message",
            "Mensaje no encontrado",
            &format!("<p id=\"error\">No existe el mensaje {id}.</p>"),
        );
    };
    ok_page(
        "sunat",
        "mensaje",
        &esc(&subject),
        &format!(
            "<p>Fecha: <span id=\"fecha\">{date}</span></p>\
             <p id=\"cuerpo\">Se le notifica el documento adjunto.</p>\
             <p><a id=\"adjunto\" href=\"/sunat/buzon/{id}/adjunto\">{}</a></p>",
            esc(&file)
        ),
    )
}

#[handler]
async fn download(Data(s): Data<&Arc<Sunat>>, req: &Request, Path(id): Path<u32>) -> Response {
    if let Some(r) = s.portal.gate().await {
        return r;
    }
    if let Err(r) = s.portal.session(req) {
        return r;
    }
    match attachment(id) {
        None => Response::builder().status(StatusCode::NOT_FOUND).finish(),
        Some((file, content_type, bytes)) => Response::builder()
            .content_type(content_type)
            .header(
                poem::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            )
            .body(bytes),
    }
}
