//! Users: people who hold API keys. Identified by id or by email (case-insensitive).

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::projects::{self, ProjectList};
use crate::error::{ActionErrors, ApiError, ListErrors, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::store::{PageQuery, Store, as_uuid, now, time};

#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<User>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// A valid e-mail address, unique (case-insensitive).
    #[schema(
        example = "alice@example.com",
        pattern = "^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)+$",
        max_length = 254
    )]
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New e-mail address.
    #[serde(alias = "new_email")]
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Also delete what depends on the resource instead of refusing with 409.
    pub force: Option<bool>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    pub id: String,
    pub email: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: Uuid::parse_str(&r.id).unwrap_or_default(),
            email: r.email,
            created_at: time(&r.created_at),
            updated_at: time(&r.updated_at),
        }
    }
}

/// Looks a user up by id or e-mail.
pub(crate) async fn resolve(conn: &mut AnyConnection, ident: &str) -> Result<UserRow, ApiError> {
    let row = match as_uuid(ident) {
        Some(id) => {
            sqlx::query_as::<_, UserRow>("SELECT id, email, created_at, updated_at FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    let row = match row {
        Some(r) => Some(r),
        None => {
            sqlx::query_as::<_, UserRow>(
                "SELECT id, email, created_at, updated_at FROM users WHERE lower(email) = lower($1)",
            )
            .bind(ident.trim())
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    row.ok_or_else(|| ApiError::not_found("user", ident))
}

static EMAIL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$",
    )
    .expect("static regex")
});

pub(crate) fn valid_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    if email.len() > 254 || !EMAIL.is_match(email) {
        return Err(ApiError::invalid("email", format!("`{email}` is not a valid e-mail address")));
    }
    Ok(email.to_string())
}

async fn email_taken(conn: &mut AnyConnection, email: &str, except: Option<&str>) -> Result<bool, ApiError> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(conn)
        .await?;
    Ok(id.is_some_and(|id| Some(id.as_str()) != except))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, description = "Created", body = User), WriteErrors))]
#[post("/users")]
pub async fn create_user(
    store: web::Data<Store>,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let email = valid_email(&body.email)?;
    let mut w = store.begin_write().await?;
    if email_taken(&mut w.tx, &email, None).await? {
        return Err(ApiError::Conflict(format!("a user with e-mail `{email}` already exists")));
    }
    let id = Uuid::new_v4().to_string();
    let ts = now();
    sqlx::query("INSERT INTO users (id, email, created_at, updated_at) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(&email)
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *w.tx)
        .await?;
    let row = resolve(&mut w.tx, &id).await?;
    w.commit("create", "user", &id).await?;
    Ok(HttpResponse::Created().json(User::from(row)))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(PageQuery),
    responses((status = 200, description = "Users ordered by e-mail", body = UserList), ListErrors))]
#[get("/users")]
pub async fn list_users(store: web::Data<Store>, q: web::Query<PageQuery>) -> Result<HttpResponse, ApiError> {
    let page = q.page()?;
    let rows = sqlx::query_as::<_, UserRow>(
        "SELECT id, email, created_at, updated_at FROM users WHERE lower(email) > lower($1) ORDER BY lower(email) LIMIT $2 OFFSET $3",
    )
    .bind(&page.after)
    .bind(page.fetch_limit())
    .bind(page.offset)
    .fetch_all(&mut *store.conn().await?)
    .await?;
    let (rows, next_cursor) = page.finish(rows, |r| &r.email);
    Ok(HttpResponse::Ok().json(UserList { items: rows.into_iter().map(User::from).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "User id or e-mail")),
    responses((status = 200, description = "The user", body = User), ReadErrors))]
#[get("/users/{user}")]
pub async fn get_user(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let row = resolve(&mut *store.conn().await?, &path).await?;
    Ok(HttpResponse::Ok().json(User::from(row)))
}

#[utoipa::path(patch, path = "/api/v1/users/{user}", tag = "users", request_body = UpdateUser,
    params(("user" = String, Path, description = "User id or e-mail")),
    responses((status = 200, description = "Updated", body = User), WriteErrors))]
#[patch("/users/{user}")]
pub async fn update_user(
    store: web::Data<Store>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let row = resolve(&mut w.tx, &path).await?;
    if let Some(email) = &body.email {
        let email = valid_email(email)?;
        if email_taken(&mut w.tx, &email, Some(&row.id)).await? {
            return Err(ApiError::Conflict(format!("a user with e-mail `{email}` already exists")));
        }
        sqlx::query("UPDATE users SET email = $1, updated_at = $2 WHERE id = $3")
            .bind(&email)
            .bind(now())
            .bind(&row.id)
            .execute(&mut *w.tx)
            .await?;
    }
    let row = resolve(&mut w.tx, &row.id).await?;
    w.commit("update", "user", &row.id).await?;
    Ok(HttpResponse::Ok().json(User::from(row)))
}

#[utoipa::path(delete, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "User id or e-mail"), ForceQuery),
    responses((status = 204, description = "Deleted"), ActionErrors))]
#[delete("/users/{user}")]
pub async fn delete_user(
    store: web::Data<Store>,
    path: web::Path<String>,
    q: web::Query<ForceQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let row = resolve(&mut w.tx, &path).await?;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE user_id = $1")
        .bind(&row.id)
        .fetch_one(&mut *w.tx)
        .await?;
    let memberships: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM project_members WHERE user_id = $1")
        .bind(&row.id)
        .fetch_one(&mut *w.tx)
        .await?;
    if (keys > 0 || memberships > 0) && !q.force.unwrap_or(false) {
        return Err(ApiError::Conflict(format!(
            "user `{}` has {keys} API key(s) and {memberships} project membership(s); delete them first or pass ?force=true",
            row.email
        )));
    }
    sqlx::query("DELETE FROM api_keys WHERE user_id = $1").bind(&row.id).execute(&mut *w.tx).await?;
    sqlx::query("DELETE FROM project_members WHERE user_id = $1").bind(&row.id).execute(&mut *w.tx).await?;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(&row.id).execute(&mut *w.tx).await?;
    w.commit("delete", "user", &row.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/users/{user}/projects", tag = "users",
    params(("user" = String, Path, description = "User id or e-mail"), PageQuery),
    responses((status = 200, description = "Projects the user is a member of, ordered by name", body = ProjectList), ListErrors))]
#[get("/users/{user}/projects")]
pub async fn user_projects(
    store: web::Data<Store>,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = store.conn().await?;
    let user = resolve(&mut conn, &path).await?;
    let list = projects::list(&mut conn, &q.page()?, Some(&user.id)).await?;
    Ok(HttpResponse::Ok().json(list))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_user)
        .service(list_users)
        .service(get_user)
        .service(update_user)
        .service(delete_user)
        .service(user_projects);
}
