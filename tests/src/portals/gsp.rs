//! gsp: a supplier ordering portal. A supervisor logs in, searches and selects a
//! consultant by code, selects the campaign cycle, opens the cart, adds products by
//! code and quantity (unknown codes and products out of stock are refused on the
//! page) and confirms. The orders placed are listed, so a flow can check whether an
//! order already exists before placing it again.

use std::sync::{Arc, Mutex};

use poem::http::StatusCode;
use poem::web::{Data, Form, Query};
use poem::{EndpointExt, Request, Response, get, handler, post};
use serde::{Deserialize, Serialize};

use super::{Portal, admin_routes, esc, ok_page, page, redirect};

pub const SUPERVISOR: &str = "SUP001";
pub const PASSWORD: &str = "gsp-demo";
pub const CYCLES: &[&str] = &["2026-16", "2026-17", "2026-18"];
/// The cycle selected when the cycle page opens.
pub const CURRENT_CYCLE: &str = "2026-17";
/// Consultants `C00001` to `C{CONSULTANTS}` are registered.
pub const CONSULTANTS: u32 = 20_000;
/// Products `P001` to `P{PRODUCTS}` exist.
pub const PRODUCTS: u32 = 200;

/// Whether a product is out of stock: P013, P063, P113, P163.
pub fn out_of_stock(n: u32) -> bool {
    n % 50 == 13
}

fn consultant_name(code: &str) -> Option<String> {
    let n: u32 = code.strip_prefix('C')?.parse().ok()?;
    if code.len() != 6 || n == 0 || n > CONSULTANTS {
        return None;
    }
    const FIRST: &[&str] = &[
        "Ana", "Rosa", "María", "Lucía", "Carmen", "Julia", "Elena", "Sofía", "Isabel", "Teresa",
    ];
    const LAST: &[&str] = &[
        "Quispe", "Flores", "Huamán", "Rojas", "Mendoza", "Torres", "Díaz", "Vargas", "Castillo",
        "Ramos", "Chávez",
    ];
    Some(format!(
        "{} {}",
        FIRST[n as usize % FIRST.len()],
        LAST[(n as usize / FIRST.len()) % LAST.len()]
    ))
}

fn product(code: &str) -> Option<u32> {
    let n: u32 = code.strip_prefix('P')?.parse().ok()?;
    (code.len() == 4 && (1..=PRODUCTS).contains(&n)).then_some(n)
}

/// An order the portal placed.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub order_id: String,
    pub consultant: String,
    pub cycle: String,
    pub lines: Vec<(String, u32)>,
    pub note: String,
    pub supervisor: String,
}

pub struct Gsp {
    pub portal: Arc<Portal>,
    pub orders: Mutex<Vec<Order>>,
}

impl Gsp {
    pub fn new() -> Arc<Gsp> {
        Arc::new(Gsp {
            portal: Portal::new("gsp"),
            orders: Mutex::new(Vec::new()),
        })
    }
}

/// Element ids by layout: the redesigned layout (2) renames them.
fn id(layout: u8, field: &'static str) -> &'static str {
    if layout != 2 {
        return field;
    }
    match field {
        "supervisor" => "codigo-supervisor",
        "password" => "clave",
        "login" => "ingresar",
        "consultant-code" => "codigo-consultora",
        "search" => "buscar",
        "select-consultant" => "elegir-consultora",
        "cycle" => "ciclo",
        "choose-cycle" => "elegir-ciclo",
        "open-cart" => "abrir-carrito",
        "product-code" => "codigo-producto",
        "quantity" => "cantidad",
        "add" => "agregar",
        "note" => "observacion",
        "confirm" => "confirmar",
        other => other,
    }
}

pub fn routes(g: Arc<Gsp>) -> poem::endpoint::BoxEndpoint<'static> {
    poem::Route::new()
        .at("/login", get(login_page).post(login))
        .at("/consultants", get(consultants))
        .at("/consultants/select", post(select_consultant))
        .at("/cycle", get(cycle_page).post(choose_cycle))
        .at("/summary", get(summary))
        .at("/cart/open", post(open_cart))
        .at("/cart", get(cart))
        .at("/cart/add", post(add_product))
        .at("/cart/confirm", post(confirm))
        .at("/orders", get(orders))
        .nest(
            "/admin",
            admin_routes(g.portal.clone(), {
                let g = g.clone();
                move || g.orders.lock().unwrap().clear()
            })
            .at("/orders", get(admin_orders)),
        )
        .data(g)
        .boxed()
}

/// Gate and session in one: `Err` is the page to answer with instead.
async fn enter(g: &Gsp, req: &Request) -> Result<(String, super::Session, u8), Response> {
    if let Some(r) = g.portal.gate().await {
        return Err(r);
    }
    let (sid, s) = g.portal.session(req)?;
    Ok((sid, s, g.portal.knobs().layout))
}

fn error_box(error: Option<&str>) -> String {
    error
        .map(|e| format!("<div id=\"error\" class=\"error\">{}</div>", esc(e)))
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
}

fn login_form(layout: u8, message: Option<&str>) -> Response {
    ok_page(
        "gsp",
        "login",
        "Supervisor sign in",
        &format!(
            "{}<form method=\"post\" action=\"/gsp/login\">\
             <label>Supervisor code</label><input id=\"{}\" name=\"supervisor\">\
             <label>Password</label><input id=\"{}\" name=\"password\" type=\"password\">\
             <button id=\"{}\" type=\"submit\">Sign in</button></form>",
            error_box(message),
            id(layout, "supervisor"),
            id(layout, "password"),
            id(layout, "login"),
        ),
    )
}

#[handler]
async fn login_page(Data(g): Data<&Arc<Gsp>>, Query(q): Query<LoginQuery>) -> Response {
    if let Some(r) = g.portal.gate().await {
        return r;
    }
    login_form(
        g.portal.knobs().layout,
        q.expired
            .is_some()
            .then_some("Your session has expired. Sign in again."),
    )
}

#[derive(Deserialize)]
struct Credentials {
    supervisor: String,
    password: String,
}

#[handler]
async fn login(Data(g): Data<&Arc<Gsp>>, Form(c): Form<Credentials>) -> Response {
    if let Some(r) = g.portal.gate().await {
        return r;
    }
    if c.supervisor != SUPERVISOR || c.password != PASSWORD {
        return login_form(
            g.portal.knobs().layout,
            Some("Wrong supervisor code or password."),
        );
    }
    let cookie = g.portal.login(&c.supervisor);
    let mut r = redirect("/gsp/consultants");
    r.headers_mut()
        .insert(poem::http::header::SET_COOKIE, cookie.parse().unwrap());
    r
}

#[derive(Deserialize)]
struct CodeQuery {
    code: Option<String>,
}

#[handler]
async fn consultants(
    Data(g): Data<&Arc<Gsp>>,
    req: &Request,
    Query(q): Query<CodeQuery>,
) -> Response {
    let (_, _, layout) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let code = q.code.unwrap_or_default().trim().to_uppercase();
    let result = if code.is_empty() {
        String::new()
    } else {
        match consultant_name(&code) {
            Some(name) => format!(
                "<table id=\"results\"><tr><td>{code}</td><td class=\"name\">{}</td><td>\
                 <form method=\"post\" action=\"/gsp/consultants/select\"><input type=\"hidden\" name=\"code\" value=\"{code}\">\
                 <button id=\"{}\" type=\"submit\">Select</button></form></td></tr></table>",
                esc(&name),
                id(layout, "select-consultant"),
            ),
            None => error_box(Some(&format!("Consultant {code} was not found."))),
        }
    };
    ok_page(
        "gsp",
        "consultants",
        "Consultants",
        &format!(
            "<form method=\"get\" action=\"/gsp/consultants\"><label>Consultant code</label>\
             <input id=\"{}\" name=\"code\" value=\"{}\"><button id=\"{}\" type=\"submit\">Search</button></form>{result}",
            id(layout, "consultant-code"),
            esc(&code),
            id(layout, "search"),
        ),
    )
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
}

#[handler]
async fn select_consultant(
    Data(g): Data<&Arc<Gsp>>,
    req: &Request,
    Form(f): Form<CodeForm>,
) -> Response {
    let (sid, _, _) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if consultant_name(&f.code).is_none() {
        return redirect(&format!("/gsp/consultants?code={}", f.code));
    }
    g.portal.update(&sid, |s| {
        s.data.insert("consultant".into(), f.code.clone());
        s.data.remove("cycle");
        s.data.remove("cart");
        s.cart.clear();
    });
    redirect("/gsp/cycle")
}

#[handler]
async fn cycle_page(Data(g): Data<&Arc<Gsp>>, req: &Request) -> Response {
    let (_, s, layout) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(consultant) = s.data.get("consultant") else {
        return redirect("/gsp/consultants");
    };
    let options: String = CYCLES
        .iter()
        .map(|c| {
            let sel = if *c == CURRENT_CYCLE { " selected" } else { "" };
            format!("<option value=\"{c}\"{sel}>Campaign {c}</option>")
        })
        .collect();
    ok_page(
        "gsp",
        "cycle",
        "Campaign cycle",
        &format!(
            "<p>Consultant <b id=\"consultant\">{consultant}</b></p>\
             <form method=\"post\" action=\"/gsp/cycle\"><label>Cycle</label><select id=\"{}\" name=\"cycle\">{options}</select>\
             <button id=\"{}\" type=\"submit\">Continue</button></form>",
            id(layout, "cycle"),
            id(layout, "choose-cycle"),
        ),
    )
}

#[derive(Deserialize)]
struct CycleForm {
    cycle: String,
}

#[handler]
async fn choose_cycle(
    Data(g): Data<&Arc<Gsp>>,
    req: &Request,
    Form(f): Form<CycleForm>,
) -> Response {
    let (sid, s, _) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.data.contains_key("consultant") {
        return redirect("/gsp/consultants");
    }
    if !CYCLES.contains(&f.cycle.as_str()) {
        return redirect("/gsp/cycle");
    }
    g.portal.update(&sid, |s| {
        s.data.insert("cycle".into(), f.cycle.clone());
    });
    redirect("/gsp/summary")
}

#[handler]
async fn summary(Data(g): Data<&Arc<Gsp>>, req: &Request) -> Response {
    let (_, s, layout) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (Some(consultant), Some(cycle)) = (s.data.get("consultant"), s.data.get("cycle")) else {
        return redirect("/gsp/consultants");
    };
    ok_page(
        "gsp",
        "summary",
        "New order",
        &format!(
            "<p>Consultant <b id=\"consultant\">{consultant}</b>, cycle <b id=\"cycle-selected\">{cycle}</b></p>\
             <form method=\"post\" action=\"/gsp/cart/open\"><button id=\"{}\" type=\"submit\">Open cart</button></form>",
            id(layout, "open-cart"),
        ),
    )
}

#[handler]
async fn open_cart(Data(g): Data<&Arc<Gsp>>, req: &Request) -> Response {
    let (sid, s, _) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.data.contains_key("cycle") {
        return redirect("/gsp/consultants");
    }
    g.portal.update(&sid, |s| {
        s.data.insert("cart".into(), "open".into());
        s.cart.clear();
    });
    redirect("/gsp/cart")
}

fn cart_page(layout: u8, s: &super::Session, error: Option<&str>) -> Response {
    let lines: String = s
        .cart
        .iter()
        .map(|(code, q)| {
            format!("<tr data-code=\"{code}\"><td>{code}</td><td class=\"quantity\">{q}</td></tr>")
        })
        .collect();
    ok_page(
        "gsp",
        "cart",
        "Cart",
        &format!(
            "{}<p>Consultant <b id=\"consultant\">{}</b>, cycle <b>{}</b></p>\
             <table id=\"cart-lines\"><tr><th>Product</th><th>Quantity</th></tr>{lines}</table>\
             <form method=\"post\" action=\"/gsp/cart/add\"><label>Product code</label><input id=\"{}\" name=\"product\">\
             <label>Quantity</label><input id=\"{}\" name=\"quantity\"><button id=\"{}\" type=\"submit\">Add</button></form>\
             <form method=\"post\" action=\"/gsp/cart/confirm\"><label>Note</label><textarea id=\"{}\" name=\"note\"></textarea>\
             <button id=\"{}\" type=\"submit\">Confirm order</button></form>",
            error_box(error),
            s.data.get("consultant").map(String::as_str).unwrap_or(""),
            s.data.get("cycle").map(String::as_str).unwrap_or(""),
            id(layout, "product-code"),
            id(layout, "quantity"),
            id(layout, "add"),
            id(layout, "note"),
            id(layout, "confirm"),
        ),
    )
}

#[handler]
async fn cart(Data(g): Data<&Arc<Gsp>>, req: &Request) -> Response {
    let (_, s, layout) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.data.contains_key("cart") {
        return redirect("/gsp/consultants");
    }
    cart_page(layout, &s, None)
}

#[derive(Deserialize)]
struct AddForm {
    product: String,
    quantity: String,
}

#[handler]
async fn add_product(Data(g): Data<&Arc<Gsp>>, req: &Request, Form(f): Form<AddForm>) -> Response {
    let (sid, mut s, layout) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.data.contains_key("cart") {
        return redirect("/gsp/consultants");
    }
    let code = f.product.trim().to_uppercase();
    let error = match (product(&code), f.quantity.trim().parse::<u32>()) {
        (None, _) => Some(format!("Product {code} does not exist.")),
        (Some(n), _) if out_of_stock(n) => Some(format!("Product {code} is out of stock.")),
        (_, Ok(q)) if (1..=999).contains(&q) => {
            match s.cart.iter_mut().find(|(c, _)| *c == code) {
                Some(line) => line.1 += q,
                None => s.cart.push((code.clone(), q)),
            }
            g.portal.update(&sid, |stored| stored.cart = s.cart.clone());
            None
        }
        _ => Some(format!(
            "The quantity `{}` is not between 1 and 999.",
            f.quantity.trim()
        )),
    };
    cart_page(layout, &s, error.as_deref())
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    note: String,
}

#[handler]
async fn confirm(Data(g): Data<&Arc<Gsp>>, req: &Request, Form(f): Form<ConfirmForm>) -> Response {
    let (sid, s, layout) = match enter(g, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.data.contains_key("cart") {
        return redirect("/gsp/consultants");
    }
    if s.cart.is_empty() {
        return cart_page(layout, &s, Some("The cart is empty."));
    }
    let consultant = s.data["consultant"].clone();
    let order = {
        let mut placed = g.orders.lock().unwrap();
        let order = Order {
            order_id: format!("ORD-{:06}", placed.len() + 1),
            consultant: consultant.clone(),
            cycle: s.data["cycle"].clone(),
            lines: s.cart.clone(),
            note: f.note.trim().to_owned(),
            supervisor: s.user.clone(),
        };
        placed.push(order.clone());
        order
    };
    g.portal.count(&consultant);
    g.portal.update(&sid, |s| {
        s.cart.clear();
        s.data.remove("cart");
    });
    if g.portal.take_fail_after_save() {
        return page(
            StatusCode::BAD_GATEWAY,
            "gsp",
            "error",
            "Bad gateway",
            "<p id=\"error\">The server took too long to answer.</p>",
        );
    }
    ok_page(
        "gsp",
        "confirmation",
        "Order placed",
        &format!(
            "<p>Order <b id=\"order-id\">{}</b> for consultant {} in cycle {}: {} products.</p>\
             <a href=\"/gsp/consultants\">Next order</a>",
            order.order_id,
            order.consultant,
            order.cycle,
            order.lines.len()
        ),
    )
}

#[derive(Deserialize)]
struct OrdersQuery {
    consultant: Option<String>,
}

/// Orders placed, optionally for one consultant.
#[handler]
async fn orders(Data(g): Data<&Arc<Gsp>>, req: &Request, Query(q): Query<OrdersQuery>) -> Response {
    if let Err(r) = enter(g, req).await {
        return r;
    }
    let rows: String = g
        .orders
        .lock()
        .unwrap()
        .iter()
        .filter(|o| q.consultant.as_ref().is_none_or(|c| *c == o.consultant))
        .map(|o| {
            format!(
                "<tr data-note=\"{}\"><td class=\"order-id\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&o.note),
                o.order_id,
                o.consultant,
                o.cycle,
                o.lines.len()
            )
        })
        .collect();
    ok_page(
        "gsp",
        "orders",
        "Orders placed",
        &format!(
            "<table id=\"orders\"><tr><th>Order</th><th>Consultant</th><th>Cycle</th><th>Products</th></tr>{rows}</table>"
        ),
    )
}

#[handler]
fn admin_orders(Data(g): Data<&Arc<Gsp>>) -> Response {
    super::json(&*g.orders.lock().unwrap())
}
